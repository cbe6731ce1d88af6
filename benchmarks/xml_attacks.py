"""How fast and how cheaply the hardened XML helpers refuse entity attacks.

For each entry point of ``ecr_pipelines.lib.xmlsafe`` and each attack (billion laughs in the
body and in an attribute, XXE), prints the milliseconds to the refusal and the growth of the
peak RSS (libxml2's allocations included, which ``tracemalloc`` in the tests cannot see). The
tests assert what is refused and why; these are the figures.
"""

import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecr_pipelines.lib import xmlsafe

_LAUGHS = "".join(f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10))
ATTACKS = {
    "billion laughs (body)": (
        '<?xml version="1.0"?>\n<!DOCTYPE l [<!ENTITY lol0 "lol">' + _LAUGHS + "]>\n"
        '<iati-activities version="2.03"><iati-activity>&lol9;</iati-activity></iati-activities>'
    ).encode(),
    "billion laughs (attribute)": (
        '<?xml version="1.0"?>\n<!DOCTYPE l [<!ENTITY lol0 "lol">' + _LAUGHS + "]>\n"
        '<iati-activities version="2.03" generated-datetime="&lol9;"/>'
    ).encode(),
}


def _consume(source: bytes) -> None:
    with xmlsafe.iterparse(source) as events:
        for _event, _element in events:
            pass


ENTRY_POINTS: dict[str, Callable[[bytes], Any]] = {
    "read_root": xmlsafe.read_root,
    "parse": xmlsafe.parse,
    "parse(huge_tree)": lambda source: xmlsafe.parse(source, huge_tree=True),
    "check_well_formed": xmlsafe.check_well_formed,
    "iterparse": _consume,
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "secret.txt"
        secret.write_text("TOP-SECRET")
        ATTACKS["XXE"] = (
            f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>\n'
            "<iati-activities><iati-activity>&xxe;</iati-activity></iati-activities>"
        ).encode()
        print(f"{'attack':28} {'entry point':18} {'ms':>8} {'peak RSS growth MB':>19}  refusal")
        for attack, source in ATTACKS.items():
            for name, entry_point in ENTRY_POINTS.items():
                before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                started = time.perf_counter()
                try:
                    entry_point(source)
                    refusal = "NOT REFUSED"
                except xmlsafe.UnsafeXMLError as exc:
                    refusal = str(exc)[:60]
                millis = (time.perf_counter() - started) * 1000
                growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
                print(f"{attack:28} {name:18} {millis:8.2f} {growth:19.1f}  {refusal}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
