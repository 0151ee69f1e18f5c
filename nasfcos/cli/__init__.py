"""The ``nasfcos`` command line: :mod:`nasfcos.cli.main` picks the verb, one module per verb group."""
