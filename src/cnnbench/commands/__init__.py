"""Subcommands the ``cnnbench`` group loads lazily; each module defines one ``click.Command`` named ``command``.

Heavy imports (torch, torchinfo) stay inside the command bodies so ``cnnbench --help`` is fast.
"""
