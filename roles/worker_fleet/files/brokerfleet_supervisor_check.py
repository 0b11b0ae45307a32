#!/usr/bin/python3
"""brokerfleet-supervisor-check FILE: read a supervisord program file with supervisord's own
parser, as supervisord would at its next start, and exit non-zero naming what it refuses
(an unknown user, a bad size, an unexpandable %(name)s...); a file without programs (a group
scaled to 0) is valid. The worker_fleet role runs it as the `validate:` of every file it puts
into /etc/supervisor/conf.d, so a file supervisord would refuse (leaving the whole fleet down
at the next boot) never replaces a working one.
"""

import io
import sys

from supervisor.options import ServerOptions


def main(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    options = ServerOptions()
    # The [supervisord] section comes from the host's supervisord.conf; an empty one suffices.
    options.configfile = io.StringIO("[supervisord]\n" + text)
    try:
        options.process_config(do_usage=False)
    except ValueError as error:
        sys.exit(f"{path}: supervisord refuses it: {error}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
