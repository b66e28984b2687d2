"""Tests run on CPU with tiny models; GPU tests are marked ``gpu`` and skip saying why.

Shared test code lives in plain modules that tests import by name, never from this file:
``tiny_models`` (the session's one tiny model, its checkpoint, ONNX files and artifacts folder) and
``helpers`` (the command line and fresh interpreters in subprocesses, the one-line-error assertion, a
stand-in built artifact with its sidecar, and torch on few threads).
"""
