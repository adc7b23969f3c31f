"""Send a photo-like picture of a dark digit on white paper (300x300 JPEG) to a running
service's /reconstruct and save both images under docs/ for the README.

    python -m app &            # or make serve
    python -m scripts.paper_digit --url http://127.0.0.1:8000 --digit 7
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import httpx

from scripts.paper_photos import paper_photo

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--digit", choices=["0", "7"], default="7")
    args = parser.parse_args()
    buffer = io.BytesIO()
    paper_photo(args.digit, size=300).save(buffer, format="JPEG", quality=90)
    photo = buffer.getvalue()
    reply = httpx.post(
        f"{args.url}/reconstruct",
        params={"layout": "pair", "scale": 4},
        files={"file": (f"paper-{args.digit}.jpg", photo, "image/jpeg")},
        timeout=30,
    )
    reply.raise_for_status()
    DOCS.mkdir(exist_ok=True)
    (DOCS / f"paper-{args.digit}.jpg").write_bytes(photo)
    (DOCS / f"paper-{args.digit}-pair.png").write_bytes(reply.content)
    print(
        f"model {reply.headers['X-Model-Id']}, reconstruction loss "
        f"{reply.headers['X-Reconstruction-Loss']} nats; wrote docs/paper-{args.digit}*."
    )


if __name__ == "__main__":
    main()
