"""`vae-client score a.png b.png`, `vae-client sample --seed 7 -o grid.png`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import httpx

from vae_client.client import DEFAULT_URL, VaeClient
from vae_client.errors import VaeApiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae-client", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("VAE_URL", DEFAULT_URL))
    parser.add_argument(
        "--api-key", default=os.environ.get("VAE_API_KEY"), help="default: $VAE_API_KEY"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="anomaly scores of image files")
    score.add_argument("images", nargs="+")
    score.add_argument("--fpr", type=float, help="flag at this false-positive rate")
    score.add_argument(
        "--preprocess",
        choices=["mnist", "none"],
        default="mnist",
        help="none: the files already are 28x28 white-on-black MNIST-style images",
    )
    sample = commands.add_parser("sample", help="write a grid of digits from the prior")
    sample.add_argument("-n", type=int, default=64)
    sample.add_argument("--seed", type=int)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument(
        "--prior", choices=["fitted", "standard"], help="default: the model's, fitted if it has one"
    )
    sample.add_argument("-o", "--out", default="samples.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with VaeClient(args.url, api_key=args.api_key) as client:
            if args.command == "score":
                report = client.anomaly_score(args.images, fpr=args.fpr, preprocess=args.preprocess)
                print(f"{'image':40} {'score':>10} {'percentile':>10}  verdict")
                for name, result in zip(args.images, report.results, strict=True):
                    verdict = "ANOMALY" if result.is_anomaly else "ok"
                    print(f"{name:40} {result.score:10.2f} {result.percentile:10.2f}  {verdict}")
            else:
                samples = client.sample(
                    args.n, seed=args.seed, temperature=args.temperature, prior=args.prior
                )
                samples.save(args.out)
                print(
                    f"wrote {args.out} (seed {samples.seed}, prior {samples.prior}, "
                    f"model {samples.model_id})"
                )
    except (VaeApiError, httpx.HTTPError, OSError, ValueError) as error:
        print(f"vae-client: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
