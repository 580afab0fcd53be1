"""scorelib command line (`python main.py`): train, sample, evaluate, compute likelihoods and benchmark
samplers. The config file is run once, every mode builds its `builder.Experiment` once (which validates
it) and hands it down.

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

from . import bench, tasks, validate
from .builder import MODES, experiment
from .builder.configs import REPO_ROOT, NoGetConfig, run_config_file, with_overrides
from .builder.fields import unknown_field_error
from .runtime import one_line_warnings, workdir_lock
from .train import TrainingInterrupted

TASKS = {"train": tasks.run_train, "sample": tasks.run_sample, "eval": tasks.run_eval,
         "likelihood": tasks.run_likelihood, "phema": tasks.run_phema}
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpfull", "-helpfull", "--helpshort", "-helpshort", "--helpxml")


def known_configs() -> list[str]:
    return sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py")
                  if not p.stem.startswith("_") and p.stem != "default")


flags.DEFINE_string("workdir", None, "run directory (default: runs/<config name>)")
flags.DEFINE_enum("mode", "train", MODES, "what to do")
flags.DEFINE_bool("overwrite", False, "with --mode=sample|eval: draw this setting's samples again (other settings' "
                  "samples are never touched)")
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
CONFIG_HELP = (f"experiment config: a name from configs/ ({', '.join(known_configs())}) or a path to a config file; "
               "--config.SECTION.FIELD=VALUE overrides a field (all fields: docs/fields.md)")
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


def _config_path(value: str) -> tuple[Path, str]:
    """The config file and run name of --config=VALUE (a configs/ name or a .py path)."""
    candidate = Path(value)
    if candidate.suffix == ".py" and candidate.is_file():
        return candidate, candidate.stem
    if (REPO_ROOT / "configs" / f"{value}.py").is_file() and value != "default":
        return REPO_ROOT / "configs" / f"{value}.py", value
    if candidate.suffix == ".py":
        fail(f"--config: {value} does not exist (a config file, or a name from configs/)")
    fail(f"--config: unknown config {value!r} (one of: {', '.join(known_configs())}; or a .py path)")
    raise AssertionError


def _split_config_arg(argv: list[str]) -> tuple[list[str], str | None]:
    """argv without --config=VALUE (or --config VALUE), and VALUE."""
    out, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    return out, value


def parse_flags(argv: list[str]) -> list[str]:
    """Run the config file once and define the --config flag over its ConfigDict (so absl parses the
    --config.KEY=VALUE overrides against it); every override must name a declared field."""
    argv, value = _split_config_arg(argv)
    asks_help = any(a.split("=", 1)[0] in HELP_FLAGS for a in argv[1:])
    if value is None:
        if not asks_help:
            fail(f"--config: required (a name from configs/: {', '.join(known_configs())}; or a path)")
        flags.DEFINE_string("config", None, CONFIG_HELP)
        return _parse(argv, asks_help)
    name, _, config_arg = value.partition(":")
    path, stem = _config_path(name)
    config = _load_config_file(path, config_arg or None)
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            node = config
            for part in key.split("."):
                if not hasattr(node, "keys") or part not in node:
                    fail(str(unknown_field_error(key, node.keys() if hasattr(node, "keys") else ())))
                node = node[part]
            OVERRIDDEN.append(key)
    config_flags.DEFINE_config_dict("config", config, CONFIG_HELP, lock_config=True, sys_argv=argv)
    rest = _parse(argv, asks_help)
    if FLAGS.workdir is None:
        FLAGS.workdir = str(Path("runs") / (f"{stem}_{config_arg}" if config_arg else stem))
    return rest


def _parse(argv: list[str], asks_help: bool) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(" ".join(str(e).split()))
    except SystemExit as e:  # absl exits 1 after printing the help it was asked for
        sys.exit(0 if asks_help else e.code)
    raise AssertionError


def _run(exp: object, workdir: Path) -> None:
    if FLAGS.mode == "bench":
        bench.run(exp, workdir, quick=FLAGS.quick, n_samples=FLAGS.bench_samples or None,
                  batch_size=FLAGS.bench_batch_size or None, peers=FLAGS.peers,
                  reference=None if FLAGS.reference == "auto" else FLAGS.reference == "yes", progress=FLAGS.progress)
    elif FLAGS.mode in ("sample", "eval"):
        TASKS[FLAGS.mode](exp, workdir, overwrite=FLAGS.overwrite)
    else:
        TASKS[FLAGS.mode](exp, workdir)


def main(argv: list[str]) -> None:
    """Build the run's experiment once (a mistake is one line and exit status 2), check its paths, take
    the workdir's lock, run the mode."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        fail("--workdir: empty (a directory path)")
    config, workdir, mode = FLAGS.config, Path(FLAGS.workdir), FLAGS.mode
    one_line_warnings(PROG[0])
    try:
        if FLAGS.checkpoint:
            if mode == "train":
                fail("--checkpoint: for --mode=sample, eval, likelihood or bench (training resumes from "
                     "WORKDIR/checkpoints)")
            config = with_overrides(config, {"sampling.checkpoint": FLAGS.checkpoint})
        exp = experiment(config, workdir, mode)
        for warning in validate.check(exp, config, workdir, OVERRIDDEN, FLAGS.quick):
            if os.environ.get("RANK", "0") == "0":
                print(f"{PROG[0]}: warning: {warning}", file=sys.stderr)
        with workdir_lock(workdir):
            _run(exp, workdir)
    except tasks.USER_ERRORS as e:
        fail(str(e))
    except TrainingInterrupted as e:
        print(f"{PROG[0]}: {e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume (training from the newest checkpoint, sampling from "
             "the finished chunks)")


def run_command_line(argv: list[str] | None = None, prog: str = "scorelib") -> None:
    """The command line: `argv` (default sys.argv) parsed by absl; mistakes are reported as `prog`."""
    PROG[0] = prog
    app.run(main, argv=argv, flags_parser=parse_flags)
