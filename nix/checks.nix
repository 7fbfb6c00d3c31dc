# `nix flake check`: the same gates as `cargo xtask test`, each a derivation.
{ pkgs, lib, craneLib, services, images, src, commonArgs, cargoArtifacts }:
let
  # moto with its server extras: the AWS API emulator the Secrets Manager tests call.
  moto = pkgs.python3.withPackages (ps: [ ps.moto ] ++ (ps.moto.optional-dependencies.server or [ ]));
  # 20 MiB uncompressed layer total per image (the issue's limit; the goal is ≤ 12 MiB).
  sizeLimit = 20 * 1024 * 1024;
in
{
  clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--workspace --all-targets --all-features -- --deny warnings";
    }
  );

  rustfmt = craneLib.cargoFmt { inherit src; };

  deny = craneLib.cargoDeny { inherit src; cargoDenyChecks = "licenses bans sources"; };

  # The full suite against a real PostgreSQL and Redis started inside the build sandbox.
  tests = craneLib.cargoNextest (
    commonArgs
    // {
      inherit cargoArtifacts;
      # Tests run on the build platform; the musl target is only for release binaries.
      CARGO_BUILD_TARGET = pkgs.stdenv.hostPlatform.rust.rustcTarget;
      CARGO_BUILD_RUSTFLAGS = "";
      nativeBuildInputs = commonArgs.nativeBuildInputs ++ [
        pkgs.postgresql
        pkgs.redis # built with TLS: the ElastiCache-like test server needs it
        moto
        pkgs.prometheus.cli # promtool, for the rule tests
      ];
      # The GitOps validators (the npm schema packages, kubernetes-validate and checkov, pinned by
      # their own lockfiles) are installed from their registries by `cargo xtask validate`, which
      # the sandbox cannot reach: their tests run in `cargo xtask test`, the policy tests here.
      cargoNextestExtraArgs = "--workspace --all-features --no-fail-fast -E 'not (package(xtask) & test(/^validate::(schemas|security|tests)::/))'";
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
  nix-parse = pkgs.runCommand "nix-parse" { nativeBuildInputs = [ pkgs.nix ]; } ''
    for file in ${../flake.nix} ${./.}/*.nix; do
      nix-instantiate --parse "$file" > /dev/null
    done
    touch $out
  '';

  # Each image's layers, unpacked, stay under the size limit and hold no shell.
  image-size = pkgs.runCommand "image-size" { nativeBuildInputs = [ pkgs.jq pkgs.gnutar ]; } ''
    ${lib.concatMapStrings (service: ''
      mkdir -p unpacked/${service.name}
      ${images.byName."image-${service.name}"} | tar -x -C unpacked/${service.name}
      size=$(cat unpacked/${service.name}/*/layer.tar | wc -c)
      echo "${service.name}: $size bytes of layers"
      if [ "$size" -ge ${toString sizeLimit} ]; then
        echo "${service.name} image is over 20 MiB" >&2
        exit 1
      fi
      for layer in unpacked/${service.name}/*/layer.tar; do
        if tar -tf "$layer" | grep -Eq '(^|/)bin/(sh|bash)$'; then
          echo "${service.name} image contains a shell" >&2
          exit 1
        fi
      done
    '') services}
    touch $out
  '';
}
