# `nix flake check`: the same gates as `cargo xtask test`, each a derivation.
{ pkgs, lib, craneLib, services, images, python, src, testArgs, testArtifacts }:
let
  # 20 MiB uncompressed layer total per image (the issue's limit; the goal is ≤ 12 MiB).
  sizeLimit = 20 * 1024 * 1024;

  # Every common shell, and busybox (which is one): any entry whose last component is one of
  # these fails the image, wherever it is.
  shells = [ "sh" "bash" "ash" "dash" "zsh" "ksh" "mksh" "busybox" ];

  # One check per image: the unpacked image is exactly the layout images.nix describes.
  imageCheck =
    service:
    let
      name = service.name;
      layout = images.layouts.${name};
      stream = images.byName."image-${name}";
      relative = path: lib.removePrefix "/" path;
      # The file modes images.nix uses, as tar lists them (another mode fails evaluation here).
      modeString = {
        "0755" = "-rwxr-xr-x";
        "0644" = "-rw-r--r--";
      };
      # What `tar -tv --numeric-owner` must show, one "<mode> <owner> <path>" line per entry.
      expected = pkgs.writeText "${name}-layout" (
        lib.concatMapStrings (line: line + "\n") (
          [ "drwxr-xr-x 0/0 ." ]
          ++ map (dir: "drwxr-xr-x 0/0 ${dir}") layout.directories
          ++ map (file: "${modeString.${file.mode}} 0/0 ${relative file.path}") layout.files
        )
      );
      expectedConfig = pkgs.writeText "${name}-config.json" (builtins.toJSON layout.config);
    in
    pkgs.runCommand "image-check-${name}"
      {
        nativeBuildInputs = [ pkgs.jq pkgs.gnutar pkgs.gnugrep pkgs.gawk pkgs.coreutils ];
      }
      ''
        set -euo pipefail
        fail() { echo "${name}: $*" >&2; exit 1; }

        mkdir image
        ${stream} > image.tar
        tar -xf image.tar -C image

        # The layers are the ones manifest.json lists, not whatever directories the archive has.
        jq -r '.[0].Layers[]' image/manifest.json > layers.txt
        [ "$(wc -l < layers.txt)" -eq 1 ] || fail "expected exactly one layer, got: $(tr '\n' ' ' < layers.txt)"
        layer="image/$(head -n 1 layers.txt)"

        # Size: the uncompressed layer.
        size=$(stat -c %s "$layer")
        echo "${name}: $size bytes of layers"
        [ "$size" -lt ${toString sizeLimit} ] || fail "layers are $size bytes, over 20 MiB"

        # Every entry: listed to a file first, so nothing is lost to an early-exiting reader.
        tar -tvf "$layer" --numeric-owner > listing.txt
        tar -tf "$layer" > names.txt
        [ "$(wc -l < listing.txt)" -eq "$(wc -l < names.txt)" ] || fail "tar listings disagree"

        # refuse <pattern> <what>: fails when any entry matches (grep exits 0 on a match, 1 on
        # none, 2 on an error; the matches go to a file, so none is lost to an early exit).
        refuse() {
          local status=0
          grep -E "$1" names.txt > matches.txt || status=$?
          case $status in
            0) cat matches.txt >&2; fail "contains $2" ;;
            1) ;;
            *) fail "grep failed ($status)" ;;
          esac
        }
        # No shell, no busybox, anywhere; nothing from the Nix store.
        refuse '(^|/)(${lib.concatStringsSep "|" shells})/?$' "a shell"
        refuse '(^|/)nix(/|$)' "/nix paths"

        # Exactly the described layout: these entries, these types and modes, owned by 0:0
        # (a symlink, hard link or device would show a different type letter).
        awk '{ path = $6; sub(/^\.\//, "", path); sub(/\/$/, "", path); if (path == "" || path == ".") path = ".";
               print $1, $2, path }' listing.txt | LC_ALL=C sort > actual-layout.txt
        LC_ALL=C sort ${expected} > expected-layout.txt
        diff -u expected-layout.txt actual-layout.txt || fail "layout differs from nix/image.toml (diff above)"

        # The runtime config is exactly the one built from nix/image.toml, and names no store path.
        config="image/$(jq -r '.[0].Config' image/manifest.json)"
        jq -S '.config' "$config" > actual-config.json
        jq -S . ${expectedConfig} > expected-config.json
        diff -u expected-config.json actual-config.json || fail "config differs from nix/image.toml (diff above)"
        status=0
        grep -F /nix/store actual-config.json > /dev/null || status=$?
        [ "$status" -eq 1 ] || fail "the runtime config references the Nix store"
        [ "$(jq -r '.os + "/" + .architecture' "$config")" = "linux/${pkgs.go.GOARCH}" ] \
          || fail "not a linux/${pkgs.go.GOARCH} image"

        touch "$out"
      '';
in
{
  clippy = craneLib.cargoClippy (
    testArgs
    // {
      cargoArtifacts = testArtifacts;
      cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
      doInstallCargoArtifacts = false; # nothing builds on it; keeps a target/ copy out of the store
    }
  );

  rustfmt = craneLib.cargoFmt { inherit src; };

  deny = craneLib.cargoDeny {
    inherit src;
    cargoDenyExtraArgs = "--all-features";
    cargoDenyChecks = "licenses bans sources";
  };

  # The full suite against a real PostgreSQL, Redis and moto started inside the build sandbox,
  # built with the dev profile for the host from testArtifacts. doCheck must be true: crane's
  # cargoNextest runs `cargo nextest run` in the check phase only, and commonArgs used to pass
  # `doCheck = false`, which made this check build nothing and run no test.
  tests = craneLib.cargoNextest (
    testArgs
    // {
      cargoArtifacts = testArtifacts;
      doCheck = true;
      doInstallCargoArtifacts = false;
      nativeBuildInputs = testArgs.nativeBuildInputs ++ [
        pkgs.postgresql
        pkgs.redis # built with TLS: the ElastiCache-like test server needs it
        python # moto_server
        pkgs.prometheus.cli # promtool, for the rule tests
      ];
      # The GitOps validators (the npm schema packages, kubernetes-validate and checkov, pinned by
      # their own lockfiles) are installed from their registries by `cargo xtask validate`, which
      # the sandbox cannot reach: their tests run in `cargo xtask test`, the policy tests here.
      # `--no-tests=fail`: a filter or build that selects nothing is a failure, not a pass.
      cargoNextestExtraArgs = "--workspace --no-fail-fast --no-tests=fail -E 'not (package(xtask) & test(/^validate::(schemas|security|tests)::/))'";
      preCheck = ''
        export PGDATA=$TMPDIR/pg
        initdb -D "$PGDATA" -U postgres -A trust >/dev/null
        pg_ctl -D "$PGDATA" -o "-k $TMPDIR -c listen_addresses=127.0.0.1 -p 5432 -c max_connections=500 -c fsync=off" -w start
        redis-server --port 6379 --save "" --daemonize yes
        moto_server -H 127.0.0.1 -p 5000 &
        export QUILLA_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
        export QUILLA_TEST_REDIS_URL=redis://127.0.0.1:6379
        export QUILLA_TEST_AWS_ENDPOINT=http://127.0.0.1:5000
        export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
        for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/5000) 2>/dev/null && break; sleep 0.1; done
      '';
      postCheck = ''
        pg_ctl -D "$PGDATA" -m fast stop
        redis-cli -p 6379 shutdown nosave || true
        kill %1 || true
      '';
    }
  );

  # Every .nix file parses (what `cargo xtask test` checks on machines without nixpkgs).
  # nix-instantiate opens a store before it parses anything (openStore() in main_nix_instantiate);
  # in the sandbox the default local store (/nix/var/nix) cannot be opened, so use the dummy store.
  nix-parse = pkgs.runCommand "nix-parse" { nativeBuildInputs = [ pkgs.nix ]; } ''
    export HOME=$TMPDIR
    for file in ${../flake.nix} ${./.}/*.nix; do
      nix-instantiate --parse --store dummy:// "$file" > /dev/null
    done
    touch "$out"
  '';
}
// lib.listToAttrs (map (service: lib.nameValuePair "image-check-${service.name}" (imageCheck service)) services)
