"""What the ``densekit`` command runs (:mod:`densekit.cli` parses and dispatches): the Lightning
commands (:mod:`~densekit.commands.lightning`), ``features`` and ``stats``
(:mod:`~densekit.commands.tools`) and ``quickstart`` (:mod:`~densekit.commands.quickstart`)."""
