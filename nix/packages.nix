# Cargo builds with crane, in two families that share nothing but the source:
#   release — static musl binaries of the services (`--release`, +crt-static), for the images;
#   test    — the host (gnu) target with the dev profile, for clippy and nextest.
# Each family has its own buildDepsOnly, so a test build never reuses (or invalidates) release
# artifacts and the other way round.
{ pkgs, lib, craneLib, muslTarget, services, version }:
let
  # The whole workspace's manifests and sources. commonCargoSources keeps every .rs and .toml file
  # (so nix/services.toml and nix/image.toml, which xtask embeds, are in); added here: SQL
  # migrations, the nextest and cargo-deny configs, and the GitOps tree, which the rule tests read
  # and metrics_catalog embeds (queried-metrics.txt).
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources ../.)
      (lib.fileset.fileFilter (file: file.hasExt "sql") ../crates)
      ../.config
      ../deny.toml
      ../gitops
      ../environments
    ];
  };

  workspaceArgs = {
    inherit src version;
    pname = "quilla";
    strictDeps = true;
  };

  # --- release: static musl binaries -------------------------------------------------------------

  staticCc = pkgs.pkgsStatic.stdenv.cc;
  muslEnv = builtins.replaceStrings [ "-" ] [ "_" ] muslTarget;

  releaseArgs = workspaceArgs // {
    CARGO_PROFILE = "release";
    CARGO_BUILD_TARGET = muslTarget;
    CARGO_BUILD_RUSTFLAGS = "-C target-feature=+crt-static";
    # ring and aws-lc-sys compile C for the target (cmake for aws-lc); link with static musl.
    "CARGO_TARGET_${lib.toUpper muslEnv}_LINKER" = "${staticCc}/bin/${staticCc.targetPrefix}cc";
    "CC_${muslEnv}" = "${staticCc}/bin/${staticCc.targetPrefix}cc";
    nativeBuildInputs = [ pkgs.cmake staticCc ];
    # Release builds run no tests: the `tests` check does, with its own (dev, host) artifacts.
    doCheck = false;
  };

  releaseArtifacts = craneLib.buildDepsOnly releaseArgs;

  # A service's source: the workspace manifests, the shared crate and the service's own crate,
  # so a change to one service rebuilds only that service.
  serviceSrc =
    service:
    lib.fileset.toSource {
      root = ../.;
      fileset = lib.fileset.unions (
        [
          ../Cargo.toml
          ../Cargo.lock
          ../.cargo
          ../crates/platform
          (../crates + "/${service.name}")
        ]
        ++ map (crate: ../crates + "/${crate}") (service.alongside or [ ])
      );
    };

  # One package per service: the release dependency artifacts, only that crate's binary. Not
  # `--locked`: with other members absent, Cargo prunes their entries from the sandbox's copy of
  # the lock; every remaining version still comes from Cargo.lock.
  binary =
    service:
    craneLib.buildPackage (
      releaseArgs
      // {
        cargoArtifacts = releaseArtifacts;
        pname = service.name;
        src = serviceSrc service;
        cargoExtraArgs = "--package ${service.name}";
        meta.mainProgram = service.name;
      }
    );

  # --- test: host target, dev profile ------------------------------------------------------------

  # No CARGO_BUILD_TARGET: cargo builds for the host, as `cargo xtask test` does. `--all-features`
  # here and in clippy/nextest, so the dependency feature sets (platform's `testkit`) match and
  # nothing compiled in testArtifacts is rebuilt. doCheck is deliberately left unset: crane's
  # buildDepsOnly then also runs `cargo test --no-run`, compiling the dev-dependencies, and
  # cargoNextest defaults it to true.
  testArgs = workspaceArgs // {
    CARGO_PROFILE = "dev";
    cargoExtraArgs = "--locked --all-features";
    nativeBuildInputs = [ pkgs.cmake ];
  };

  testArtifacts = craneLib.buildDepsOnly testArgs;
in
{
  inherit src testArgs testArtifacts;
  binaries = lib.listToAttrs (map (service: lib.nameValuePair service.name (binary service)) services);
}
