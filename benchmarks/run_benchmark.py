"""The benchmark as a program: the same options as ``ulffn-deploy benchmark``.

    python benchmarks/run_benchmark.py --artifacts artifacts -o benchmarks/results
"""

from ulffn_deploy.cli import main

if __name__ == "__main__":
    import sys

    main(["benchmark", *sys.argv[1:]])
