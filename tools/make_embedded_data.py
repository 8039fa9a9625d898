"""Write the embedded default dataset (coloured shapes + captions + edge maps), the stand-in for PixArt-δ's
internal training data (paper §3).

    python tools/make_embedded_data.py --out output/embedded_data --num 4800
"""

import argparse

from diffusion.data.embedded import make_embedded_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (gets images/, edges/, data_info.json)")
    parser.add_argument("--num", type=int, default=4800, help="number of images")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = make_embedded_data(args.out, num=args.num, size=args.size, seed=args.seed)
    print(f"wrote {args.num} images and {info}")


if __name__ == "__main__":
    main()
