"""``python -m ulffn_deploy.train --data DIR --out RUN_DIR [options]``: what torchrun starts on every process.

    torchrun --standalone --nproc_per_node=2 -m ulffn_deploy.train --data DIR --out RUN_DIR --preset cpu-demo

Exit codes: 0 done, 2 a usage or input error (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ulffn_deploy.errors import UlffnError


def main(argv: Sequence[str] | None = None) -> int:
    from ulffn_deploy.train.trainer import train

    try:
        train(list(sys.argv[1:] if argv is None else argv))
    except UlffnError as exc:
        where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"error{where}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
