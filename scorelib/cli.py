"""scorelib command line (`python main.py`): train, sample, evaluate, compute likelihoods and
benchmark samplers. Every mode builds the config's `build.Experiment` once and hands it down.

    python main.py --config=ncsn_digits --workdir=runs/digits            # train + sample + evaluate
    python main.py --config=ncsn_cifar --config.training.batch_size=64   # any config field can be overridden
    python main.py --config=ncsn_digits --workdir=runs/digits --mode=sample --config.sampling.method=ode
    python main.py --config=ncsnv2_cifar --mode=sample --checkpoint=checkpoint.pth   # a published checkpoint
    python main.py --config=openai:cifar10_uncond --mode=sample --checkpoint=cifar10_uncond_50M_500K.pt

--config takes a name from configs/ (NAME:ARG passes ARG to its get_config) or a path to a config file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from . import bench, build, tasks, validate
from .defaults import REPO_ROOT, NoGetConfig, run_config_file

ROOT = REPO_ROOT  # holds configs/
MODES = ("train", "sample", "eval", "likelihood", "bench")
TASKS = {"train": tasks.run_train, "sample": tasks.run_sample, "eval": tasks.run_eval,
         "likelihood": tasks.run_likelihood}

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpfull", "-helpfull", "--helpshort", "-helpshort", "--helpxml")


def known_configs() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_") and p.stem != "default")


config_flags.DEFINE_config_file(
    "config", None, f"experiment config: a name from configs/ ({', '.join(known_configs())}) or a path to a "
    "config file; --config.SECTION.FIELD=VALUE overrides a field (all fields: scorelib/defaults.py)",
    lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (default: runs/<config name>)")
flags.DEFINE_enum("mode", "train", MODES, "what to do")
flags.DEFINE_bool("quick", False, "with --mode=bench: the small sampler grid")
flags.DEFINE_integer("bench_samples", 0, "with --mode=bench: samples per row (0: 256 with --quick, else "
                     "eval.n_samples)")
flags.DEFINE_integer("bench_batch_size", 0, "with --mode=bench: the sampling batch (0: sampling.batch_size)")
flags.DEFINE_bool("peers", True, "with --mode=bench: also run k-diffusion's and diffusers' samplers when installed")
flags.DEFINE_enum("reference", "auto", ("auto", "yes", "no"), "with --mode=bench: the tight-ODE transport error "
                  "(auto: toy data only)")
flags.DEFINE_bool("progress", True, "progress bars / lines on stderr (--mode=bench)")
flags.DEFINE_string("checkpoint", None, "with --mode=sample|eval|likelihood|bench: the checkpoint to use (sets "
                    "sampling.checkpoint): scorelib's own, or a published one of ncsn, ncsnv2, score_sde, ddim, "
                    "improved-/guided-diffusion, whose architecture --config gives")
FLAGS = flags.FLAGS
OVERRIDDEN: list[str] = []  # the config fields given on the command line (--config.KEY=VALUE)
PROG = ["scorelib"]  # the name user mistakes are reported under (`python -m scorelib.bench` sets its own)


def fail(message: str) -> None:
    """A user mistake: one line on stderr, exit status 2."""
    print(f"{PROG[0]}: {message}", file=sys.stderr)
    sys.exit(2)


def _load_config_file(path: Path, arg: str | None = None) -> ConfigDict:
    try:
        config = run_config_file(path, arg)
    except NoGetConfig:
        fail(f"{path}: the config file has no get_config() (a function returning a ConfigDict)")
    except (KeyError, ValueError) as e:
        if arg is None:
            fail(f"{path}: the config file raised {type(e).__name__}: {e.args[0] if e.args else e}")
        fail(f"--config: {path.stem}:{arg}: {e.args[0] if e.args else e}")
    except Exception as e:  # a config file that fails to run is the user's file: one line, not a traceback
        fail(f"{path}: the config file raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
             "(a file whose get_config() returns a ConfigDict)")
    if not isinstance(config, ConfigDict):
        fail(f"{path}: get_config() returned a {type(config).__name__} (a ml_collections ConfigDict)")
    return config


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
                fail(f"--config: {value} does not exist (a config file, or a name from configs/)")
            else:
                fail(f"--config: unknown config {value!r} (one of: {', '.join(known_configs())}; or a .py path)")
            arg = f"--config={path}{colon}{config_arg}"
            name = f"{name}_{config_arg}" if colon else name
        out.append(arg)
        i += 1
    if path is None:
        if any(a.split("=", 1)[0] in HELP_FLAGS for a in argv[1:]):
            return out, ""  # absl prints the help and exits
        fail(f"--config: required (a name from configs/: {', '.join(known_configs())}; or a path)")
    config = _load_config_file(path, config_arg if colon else None)
    for arg in out:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            node = config
            for part in key.split("."):
                if not hasattr(node, "keys") or part not in node:
                    fail(str(validate.unknown_field_error(key, node.keys() if hasattr(node, "keys") else ())))
                node = node[part]
            OVERRIDDEN.append(key)
    return out, name


def parse_flags(argv: list[str]) -> list[str]:
    argv, name = _resolve_config_arg(argv)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        fail(" ".join(str(e).split()))
    except SystemExit as e:  # absl exits 1 after printing the help it was asked for
        sys.exit(0 if any(a.split("=", 1)[0] in HELP_FLAGS for a in argv[1:]) else e.code)
    if FLAGS.workdir is None:
        FLAGS.workdir = str(Path("runs") / name)
    return rest


def main(argv: list[str]) -> None:
    """Check the run (one line and exit status 2 for a mistake), build its experiment once, run the mode."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config, workdir, mode = FLAGS.config, Path(FLAGS.workdir), FLAGS.mode
    try:
        if FLAGS.checkpoint:
            if mode == "train":
                fail("--checkpoint: for --mode=sample, eval, likelihood or bench (training resumes from "
                     "WORKDIR/checkpoints)")
            config = build.with_overrides(config, {"sampling.checkpoint": FLAGS.checkpoint})
        for warning in validate.check_run(config, workdir, mode, OVERRIDDEN, FLAGS.quick):
            if os.environ.get("RANK", "0") == "0":
                print(f"{PROG[0]}: warning: {warning}", file=sys.stderr)
        exp = build.experiment(config, workdir, mode)
        if mode == "bench":
            bench.run(exp, workdir, quick=FLAGS.quick, n_samples=FLAGS.bench_samples or None,
                      batch_size=FLAGS.bench_batch_size or None, peers=FLAGS.peers,
                      reference=None if FLAGS.reference == "auto" else FLAGS.reference == "yes",
                      progress=FLAGS.progress)
        else:
            TASKS[mode](exp, workdir)
    except tasks.USER_ERRORS as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume (training from the newest checkpoint, sampling from "
             "the finished chunks)")


def run(argv: list[str] | None = None, prog: str = "scorelib") -> None:
    """The command line: `argv` (default sys.argv) parsed by absl; mistakes are reported as `prog`."""
    PROG[0] = prog
    app.run(main, argv=argv, flags_parser=parse_flags)
