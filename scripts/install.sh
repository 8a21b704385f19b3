#!/bin/sh
# Builds evmpm in release mode and installs what a C program needs to use it:
#
#   PREFIX/include/evmpm.h
#   PREFIX/lib/libevmpm.a
#   PREFIX/lib/libevmpm.so.X.Y.Z   (SONAME libevmpm.so.X, or .so.0.Y while X is 0)
#   PREFIX/lib/libevmpm.so.X -> libevmpm.so.X.Y.Z
#   PREFIX/lib/libevmpm.so   -> libevmpm.so.X.Y.Z
#   PREFIX/lib/pkgconfig/evmpm.pc          (links -levmpm: the shared library)
#   PREFIX/lib/pkgconfig/evmpm-static.pc   (links libevmpm.a and what it needs)
#   PREFIX/lib/cmake/evmpm/evmpmConfig.cmake
#   PREFIX/lib/cmake/evmpm/evmpmConfigVersion.cmake
#
# Needs only cargo (and the C toolchain cargo links with); with --no-build
# not even that, so `sudo scripts/install.sh --no-build` installs what
# `cargo build --release` built. The version comes from Cargo.toml.
# CARGO_TARGET_DIR and cargo's other settings are honoured.
set -eu

usage() {
    cat <<'USAGE'
Usage: scripts/install.sh [--prefix DIR] [--destdir DIR] [--no-build]

  --prefix DIR   where evmpm is installed (default /usr/local); written into
                 the pkg-config files
  --destdir DIR  stage the installation under DIR: files go to DIR/PREFIX
                 (for packagers; the DESTDIR environment variable works too)
  --no-build     do not run `cargo build --release`: install what it built
                 before (for running as root, where cargo may be missing)
USAGE
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

prefix=/usr/local
destdir=${DESTDIR:-}
build=yes
while [ "$#" -gt 0 ]; do
    case $1 in
        --prefix)
            [ "$#" -ge 2 ] || die "--prefix needs a directory"
            prefix=$2
            shift 2
            ;;
        --prefix=*)
            prefix=${1#--prefix=}
            shift
            ;;
        --destdir)
            [ "$#" -ge 2 ] || die "--destdir needs a directory"
            destdir=$2
            shift 2
            ;;
        --destdir=*)
            destdir=${1#--destdir=}
            shift
            ;;
        --no-build)
            build=no
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
done

case $prefix in
    /*) ;;
    *) die "--prefix must be an absolute path, not '$prefix'" ;;
esac
# pkg-config splits its flags at white space.
case $prefix in
    *[[:space:]]*) die "--prefix must not contain white space: '$prefix'" ;;
esac
# /usr/local/ and /usr/local are the same prefix; keep "/" as it is.
while [ "${#prefix}" -gt 1 ] && [ "${prefix%/}" != "$prefix" ]; do
    prefix=${prefix%/}
done
# A relative staging directory is relative to where the script was started.
case $destdir in
    '' | /*) ;;
    *) destdir=$(pwd)/$destdir ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}

# ---- build -------------------------------------------------------------------
if [ "$build" = yes ]; then
    command -v "$cargo" >/dev/null 2>&1 ||
        die "cargo not found (or build first and use --no-build)"
    "$cargo" build --release --lib --manifest-path "$root/Cargo.toml"
fi

# ---- what was built, and its version -----------------------------------------
# The version line of Cargo.toml's [package] table.
version=$(sed -n '/^\[package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
    "$root/Cargo.toml" | sed -n 1p)
[ -n "$version" ] || die "cannot read the version from Cargo.toml"

# Where cargo builds: it knows best (CARGO_TARGET_DIR, .cargo/config.toml);
# without cargo, CARGO_TARGET_DIR or target/.
if command -v "$cargo" >/dev/null 2>&1; then
    target_dir=$("$cargo" metadata --no-deps --format-version 1 \
        --manifest-path "$root/Cargo.toml" |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [ -n "$target_dir" ] || die "cannot read the target directory from cargo metadata"
else
    target_dir=${CARGO_TARGET_DIR:-$root/target}
fi

# MAJOR.MINOR.PATCH, without a pre-release or build suffix.
numeric=${version%%[-+]*}
major=${numeric%%.*}
rest=${numeric#*.}
minor=${rest%%.*}
patch=${rest#*.}
for n in "$major" "$minor" "$patch"; do
    case $n in
        '' | *[!0-9]*) die "version '$version' is not MAJOR.MINOR.PATCH" ;;
    esac
done

built=$target_dir/${CARGO_BUILD_TARGET:+$CARGO_BUILD_TARGET/}release
for f in libevmpm.a libevmpm.so; do
    [ -f "$built/$f" ] || die "$built/$f is missing: run cargo build --release"
done
if [ "$build" = no ]; then
    stale=$(find "$root/Cargo.toml" "$root/build.rs" "$root/src" "$root/include" \
        -newer "$built/libevmpm.a" -type f | sed -n 1p)
    if [ -n "$stale" ]; then
        printf 'install.sh: warning: %s is newer than the built library\n' "$stale" >&2
    fi
fi

# Pointer size of the library (its ELF class: 1 is 32-bit, 2 is 64-bit), so
# CMake can refuse a 32-bit build against a 64-bit library or the reverse.
case $(od -An -tu1 -j4 -N1 "$built/libevmpm.so" | tr -d ' \n') in
    1) sizeof_void_p=4 ;;
    2) sizeof_void_p=8 ;;
    *) die "$built/libevmpm.so is not an ELF file" ;;
esac

# The system libraries a program linking libevmpm.a needs after it, as
# `rustc --print native-static-libs` reports them: native-static-libs.txt,
# which tests/packaging.rs checks against rustc. The shared library records
# its own dependencies. For CMake the same as link items: threads through
# Threads::Threads, libc implied.
libs_file=$root/native-static-libs.txt
[ -f "$libs_file" ] || die "$libs_file is missing"
native_libs=
cmake_libs=
for lib in $(sed '/^[[:space:]]*#/d' "$libs_file"); do
    native_libs=${native_libs:+$native_libs }$lib
    case $lib in
        -lpthread) item=Threads::Threads ;;
        -lc) continue ;;
        -l*) item=${lib#-l} ;;
        *) die "native-static-libs.txt: unexpected flag: $lib" ;;
    esac
    cmake_libs=${cmake_libs:+$cmake_libs;}$item
done
[ -n "$native_libs" ] || die "native-static-libs.txt lists no library"

# ---- install -----------------------------------------------------------------
dest=$destdir$prefix
libdir=$dest/lib
shlib=libevmpm.so.$numeric
# 0.x minors may break the ABI (Cargo's rule), so while the major is 0 the
# SONAME carries the minor too; build.rs sets the same name.
if [ "$major" = 0 ]; then
    soname=libevmpm.so.0.$minor
else
    soname=libevmpm.so.$major
fi

# Every file is written next to its final name, then renamed over it, so a
# program running from the old shared library keeps working.
put() { # put SOURCE DEST MODE
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.tmp.$$"
    chmod "$3" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}

link() { # link TARGET NAME
    ln -s "$1" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}

# Escapes a value for the right-hand side of a sed s|||.
sed_value() {
    printf '%s\n' "$1" | sed 's/[\\&|]/\\&/g'
}

render() { # render TEMPLATE DEST
    mkdir -p "$(dirname "$2")"
    sed -e "s|@PREFIX@|$(sed_value "$prefix")|g" \
        -e "s|@VERSION@|$(sed_value "$version")|g" \
        -e "s|@MAJOR@|$major|g" \
        -e "s|@MINOR@|$minor|g" \
        -e "s|@PATCH@|$patch|g" \
        -e "s|@SONAME@|$soname|g" \
        -e "s|@SHARED_LIBRARY@|$shlib|g" \
        -e "s|@SIZEOF_VOID_P@|$sizeof_void_p|g" \
        -e "s|@NATIVE_LIBS@|$(sed_value "$native_libs")|g" \
        -e "s|@CMAKE_NATIVE_LIBS@|$(sed_value "$cmake_libs")|g" \
        "$root/cmake/$1" >"$2.tmp.$$"
    if grep -n '@[A-Z_]*@' "$2.tmp.$$" >&2; then
        rm -f "$2.tmp.$$"
        die "cmake/$1 has a placeholder this script does not know"
    fi
    chmod 644 "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}

put "$root/include/evmpm.h" "$dest/include/evmpm.h" 644
put "$built/libevmpm.a" "$libdir/libevmpm.a" 644
put "$built/libevmpm.so" "$libdir/$shlib" 755
link "$shlib" "$libdir/$soname"
link "$shlib" "$libdir/libevmpm.so"
render evmpm.pc.in "$libdir/pkgconfig/evmpm.pc"
render evmpm-static.pc.in "$libdir/pkgconfig/evmpm-static.pc"
render evmpmConfig.cmake.in "$libdir/cmake/evmpm/evmpmConfig.cmake"
render evmpmConfigVersion.cmake.in "$libdir/cmake/evmpm/evmpmConfigVersion.cmake"

printf 'installed evmpm %s in %s\n' "$version" "$dest"
if [ -z "$destdir" ]; then
    case $prefix in
        /usr | /usr/local)
            printf 'if programs cannot find %s, run ldconfig\n' "$soname"
            ;;
    esac
fi
