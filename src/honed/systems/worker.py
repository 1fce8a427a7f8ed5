"""Entry point of a PythonEnvironment worker: ``python -m honed.systems.worker REQUEST RESPONSE``.

REQUEST is a ``PassRequest`` as JSON; the worker runs the pass in this interpreter and writes the
``PassResponse`` as JSON to RESPONSE.  A user's error exits 2 with ``USER_ERROR_PREFIX`` and the one line
on stderr, so the host raises it as the same one-line error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

USER_ERROR_PREFIX = "honed-user-error: "


def main(request_path: str, response_path: str) -> int:
    from honed.errors import UserError
    from honed.systems.base import PassRequest

    request = PassRequest.from_json(json.loads(Path(request_path).read_text()))
    try:
        response = request.execute()
    except LookupError as e:
        print(str(e), file=sys.stderr)
        return 2
    except UserError as e:
        print(USER_ERROR_PREFIX + str(e).replace("\n", " "), file=sys.stderr)
        return 2
    Path(response_path).write_text(json.dumps(response.to_json(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
