"""Host side of brewmeter: harness, emulated board and cloud, and the `brewmeter` command."""

import argparse


class Help(argparse.RawDescriptionHelpFormatter):
    """--help for every brewmeter command: each option's default shown after its help
    (unless the help already says it, or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        h = action.help or ""
        if ("default" in h or not action.option_strings
                or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS):  # (0 == False: compare by identity)
            return h
        return h + " (default: %(default)s)"
