"""scorelib command line: train, sample, evaluate, compute likelihoods and benchmark samplers.

    python main.py --config=ncsn_digits --workdir=runs/digits            # train + sample + evaluate
    python main.py --config=ncsn_cifar --config.training.batch_size=64   # any config field can be overridden
    python main.py --config=ncsn_digits --workdir=runs/digits --mode=sample --config.sampling.method=ode
    python main.py --config=ncsnv2_cifar --mode=sample --checkpoint=checkpoint.pth   # a published checkpoint
    python main.py --config=openai:cifar10_uncond --mode=sample --checkpoint=cifar10_uncond_50M_500K.pt

--config takes a name from configs/ (NAME:ARG passes ARG to its get_config) or a path to a config file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parent
MODES = ("train", "sample", "eval", "likelihood", "bench")

config_flags.DEFINE_config_file("config", None, "experiment config: a name from configs/ or a path", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (default: runs/<config name>)")
flags.DEFINE_enum("mode", "train", MODES, "what to do")
flags.DEFINE_bool("quick", False, "with --mode=bench: the small sampler grid")
flags.DEFINE_string("checkpoint", None, "with --mode=sample|eval|likelihood|bench: the checkpoint to use (sets "
                    "sampling.checkpoint): scorelib's own, or a published one of ncsn, ncsnv2, score_sde, ddim, "
                    "improved-/guided-diffusion, whose architecture --config gives")
FLAGS = flags.FLAGS


def known_configs() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_") and p.stem != "default")


def fail(message: str) -> None:
    print(f"scorelib: {message}", file=sys.stderr)
    sys.exit(2)


def _load_config_file(path: Path, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"_scorelib_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, "get_config"):
        fail(f"config file {path} has no get_config()")
    if arg is None:
        return module.get_config()
    try:
        return module.get_config(arg)
    except (KeyError, ValueError) as e:
        fail(f"config {path.stem}:{arg}: {e.args[0] if e.args else e}")


def _resolve_config_arg(argv: list[str]) -> tuple[list[str], str]:
    """Turn --config=NAME into the path of configs/NAME.py and check every --config.key override."""
    out, name, path = [], None, None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            arg = f"--config={argv[i + 1]}"
            i += 1
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            value, colon, config_arg = value.partition(":")
            candidate = Path(value)
            if candidate.suffix == ".py" and candidate.is_file():
                path, name = candidate, candidate.stem
            elif (ROOT / "configs" / f"{value}.py").is_file() and value != "default":
                path, name = ROOT / "configs" / f"{value}.py", value
            elif candidate.suffix == ".py":
                fail(f"config file {value} does not exist")
            else:
                fail(f"unknown config {value!r}; known configs: {', '.join(known_configs())}")
            arg = f"--config={path}{colon}{config_arg}"
            name = f"{name}_{config_arg}" if colon else name
        out.append(arg)
        i += 1
    if path is None:
        fail(f"--config is required; known configs: {', '.join(known_configs())}")
    config = _load_config_file(path, config_arg if colon else None)
    for arg in out:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            node = config
            for part in key.split("."):
                if not hasattr(node, "keys") or part not in node:
                    fail(f"unknown config key {key!r} in config {name!r}")
                node = node[part]
    return out, name


def parse_flags(argv: list[str]) -> list[str]:
    argv, name = _resolve_config_arg(argv)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    if FLAGS.workdir is None:
        FLAGS.workdir = str(Path("runs") / name)
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    from scorelib import build, tasks

    config, workdir, mode = FLAGS.config, Path(FLAGS.workdir), FLAGS.mode
    try:
        if FLAGS.checkpoint:
            if mode == "train":
                fail("--checkpoint is for --mode=sample, eval, likelihood or bench (training resumes from "
                     "WORKDIR/checkpoints)")
            config = build.with_overrides(config, {"sampling.checkpoint": FLAGS.checkpoint})
        if mode == "train":
            tasks.run_train(config, workdir)
        elif mode == "sample":
            tasks.run_sample(config, workdir)
        elif mode == "eval":
            tasks.run_eval(config, workdir)
        elif mode == "likelihood":
            tasks.run_likelihood(config, workdir)
        else:
            tasks.run_bench(config, workdir, quick=FLAGS.quick)
    except tasks.USER_ERRORS as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume (training from the newest checkpoint, sampling from "
             "the finished chunks)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
