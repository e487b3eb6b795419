#!/usr/bin/python3
"""Extracts the King James Version as plain text from Debian's bible-kjv.

The text is NOT stored in this repository.  Debian's package
``bible-kjv-text`` ships it compressed (``/usr/lib/bible.data``, the "EC02"
format of Chip Chapin's Bible Retrieval System), and the ``bible`` program of
package ``bible-kjv`` decodes it:

    apt-get install -y bible-kjv          # pulls in bible-kjv-text
    /usr/bin/python3 tests/reference/kjv_text.py /tmp/kjv.txt

Output format (ASCII, '\\n' line ends): for every chapter a heading line
("Genesis 1"), then one verse per line without its verse number; chapters are
separated by one empty line.  31,102 verses, 1,189 chapters, about 4.1 MB.
The KJV text (1611) is in the public domain (see
/usr/share/doc/bible-kjv-text/copyright; in the United Kingdom the Crown's
letters patent still govern printing of the KJV).
"""

import hashlib
import re
import subprocess
import sys

BIBLE = "/usr/bin/bible"
# Whole Bible, one logical line per verse (no re-wrapping).
BIBLE_ARGS = ["-l100000", "gen1:1-rev22:21"]

_VERSE = re.compile(r"^  (\d+) (.*)$")


def kjv_text():
    """Returns the whole KJV as a str in the format described above."""
    raw = subprocess.run([BIBLE] + BIBLE_ARGS, check=True, stdout=subprocess.PIPE,
                         env={"LC_ALL": "C", "COLUMNS": "100000"}).stdout
    raw = raw.decode("ascii")
    chapters = []
    cur = None
    n_verses = 0
    for line in raw.split("\n"):
        if not line.strip():
            continue
        m = _VERSE.match(line)
        if m:
            if cur is None:
                raise ValueError("verse before any chapter heading: %r" % line)
            cur.append(m.group(2).strip())
            n_verses += 1
        else:
            cur = [line.strip()]
            chapters.append(cur)
    if len(chapters) != 1189 or n_verses != 31102:
        raise ValueError("unexpected KJV extraction: %d chapters, %d verses"
                         % (len(chapters), n_verses))
    return "\n\n".join("\n".join(c) for c in chapters) + "\n"


def main():
    text = kjv_text()
    data = text.encode("ascii")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "wb") as f:
            f.write(data)
        print("wrote %s: %d bytes, sha256 %s"
              % (sys.argv[1], len(data), hashlib.sha256(data).hexdigest()))
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
