"""The ``strata`` command: one module per subcommand.

Each module ``strata/cli/<name>.py`` defines ``register(subparsers)`` which
adds its subparser and sets ``func`` (a callable taking the parsed namespace
and returning an exit code). `main` discovers them; nothing else to edit.
"""
