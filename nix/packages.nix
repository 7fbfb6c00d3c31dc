# Static musl binaries of every service with crane: dependencies are compiled once
# (buildDepsOnly) and reused by every service package and by the checks.
{ pkgs, lib, craneLib, muslTarget, services, version }:
let
  # The whole workspace's manifests and sources (Rust, SQL migrations, embedded TOML defaults),
  # and the GitOps tree, which the rule tests read and metrics_catalog embeds (queried-metrics.txt).
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources ../.)
      (lib.fileset.fileFilter (file: file.hasExt "sql") ../crates)
      (lib.fileset.fileFilter (file: file.hasExt "toml") ../crates)
      ../.config
      ../deny.toml
      ../gitops
      ../environments
    ];
  };

  staticCc = pkgs.pkgsStatic.stdenv.cc;
  targetEnv = lib.toUpper (builtins.replaceStrings [ "-" ] [ "_" ] muslTarget);

  commonArgs = {
    inherit src version;
    pname = "quilla";
    strictDeps = true;
    CARGO_BUILD_TARGET = muslTarget;
    CARGO_BUILD_RUSTFLAGS = "-C target-feature=+crt-static";
    # ring and aws-lc-sys compile C for the target (cmake for aws-lc); link with static musl.
    "CARGO_TARGET_${targetEnv}_LINKER" = "${staticCc}/bin/${staticCc.targetPrefix}cc";
    "CC_${builtins.replaceStrings [ "-" ] [ "_" ] muslTarget}" = "${staticCc}/bin/${staticCc.targetPrefix}cc";
    nativeBuildInputs = [ pkgs.cmake staticCc ];
    # Tests need PostgreSQL and Redis: checks.nix runs them.
    doCheck = false;
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

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

  # One package per service: the same dependency artifacts, only that crate's binary. Not
  # `--locked`: with other members absent, Cargo prunes their entries from the sandbox's copy of
  # the lock; every remaining version still comes from Cargo.lock.
  binary =
    service:
    craneLib.buildPackage (
      commonArgs
      // {
        inherit cargoArtifacts;
        pname = service.name;
        src = serviceSrc service;
        cargoExtraArgs = "--package ${service.name}";
        meta.mainProgram = service.name;
      }
    );
in
{
  inherit src commonArgs cargoArtifacts;
  binaries = lib.listToAttrs (map (service: lib.nameValuePair service.name (binary service)) services);
}
