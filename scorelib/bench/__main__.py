"""`python -m scorelib.bench`: an alias of `python main.py --mode=bench` with the benchmark's own
spellings of its flags (--config NAME_OR_PATH, --workdir DIR, --quick, --n-samples N, --batch-size N,
--no-peers, --reference auto|yes|no, --no-progress, --config.KEY=VALUE); mistakes are reported as
`scorelib.bench: <one line>` with exit status 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..builder.configs import REPO_ROOT

# --flag VALUE of this alias -> main.py's flag
VALUED = {"--config": "--config", "--workdir": "--workdir", "--n-samples": "--bench_samples",
          "--batch-size": "--bench_batch_size", "--reference": "--reference"}
SWITCHES = {"--quick": "--quick", "--no-peers": "--nopeers", "--no-progress": "--noprogress"}


def _fail(message: str) -> None:
    print(f"scorelib.bench: {message}", file=sys.stderr)
    raise SystemExit(2)


def _config_file(arg: str) -> str:
    """A config name (configs/NAME.py in the repository or the working directory) or file, as a path."""
    path = Path(arg)
    if path.suffix == ".py" and path.is_file():
        return str(path)
    candidates = [root / "configs" / f"{arg}.py" for root in (REPO_ROOT, Path.cwd())]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        _fail(f"no config {arg!r} (looked for {candidates[0]})")
    return str(found)


def translate(argv: list[str]) -> list[str]:
    """This alias's arguments as main.py's (`--mode=bench` first)."""
    out, i = ["--mode=bench"], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in VALUED and not name.startswith("--config."):
            if not eq:
                if i + 1 >= len(argv):
                    _fail(f"{name} needs a value")
                i, value = i + 1, argv[i + 1]
            out.append(f"{VALUED[name]}={_config_file(value) if name == '--config' else value}")
        elif arg in ("-h", "--help"):
            out.append("--helpshort")
        elif arg in SWITCHES:
            out.append(SWITCHES[arg])
        elif arg.startswith("--config.") and eq:
            out.append(arg)
        else:
            _fail(f"unrecognised argument {arg!r} (config overrides are --config.KEY=VALUE)")
        i += 1
    return out


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:  # spinning OpenMP threads distort timings on shared cores
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "scorelib.bench", *sys.argv[1:]],
                  {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    from ..cli import run_command_line

    run_command_line([sys.argv[0], *translate(sys.argv[1:])], prog="scorelib.bench")
