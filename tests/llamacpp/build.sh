#!/usr/bin/env bash
# Builds llama-server and llama-quantize once from the llama.cpp source pinned below (the copy
# the llama-cpp-python source package carries) and caches them outside the repository.
# CPU only, portable (GGML_NATIVE=OFF: a native build may use instructions a shared or
# virtualised host forbids, which shows up as "Illegal instruction" on quantised models),
# niced and -j2 so the machine stays usable. About 12 minutes on 2 cores; later runs reuse it.
# Prints the directory holding the binaries.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${RINNA_LLAMACPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rinna-bot/llama.cpp}
DEST=$CACHE/llama-cpp-python-$VERSION
if [[ -x $DEST/bin/llama-server && -x $DEST/bin/llama-quantize ]]; then
    echo "$DEST/bin"; exit 0
fi
mkdir -p "$CACHE"
SDIST=$CACHE/llama_cpp_python-$VERSION.tar.gz
if [[ ! -f $SDIST ]]; then
    "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$CACHE" >&2
fi
echo "$SHA256  $SDIST" | sha256sum --check --quiet >&2
SRC=$CACHE/src-$VERSION
rm -rf "$SRC" && mkdir -p "$SRC"
tar xzf "$SDIST" -C "$SRC" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
nice -n 19 cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
nice -n 19 cmake --build "$SRC/build" -j2 --target llama-server llama-quantize llama-tokenize >&2
mkdir -p "$DEST/bin.tmp"
cp "$SRC/build/bin/llama-server" "$SRC/build/bin/llama-quantize" "$SRC/build/bin/llama-tokenize" "$DEST/bin.tmp/"
rm -rf "$DEST/bin" && mv "$DEST/bin.tmp" "$DEST/bin" && rm -rf "$SRC"
echo "$DEST/bin"
