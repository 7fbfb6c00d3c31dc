# Quilla's flake: a table of contents. The logic lives in nix/ (see nix/README.md).
{
  description = "Quilla: multi-region payments platform — Rust services in distroless images";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";
    crane.url = "github:ipetkov/crane";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    { self, nixpkgs, crane, rust-overlay }:
    let
      # EKS node architectures: x86_64, and Graviton (aarch64) for cost.
      systems = [ "x86_64-linux" "aarch64-linux" ];
      perSystem =
        f: nixpkgs.lib.genAttrs systems (system: f (import ./nix/context.nix { inherit self nixpkgs crane rust-overlay system; }));
    in
    {
      packages = perSystem (ctx: ctx.packages);
      checks = perSystem (ctx: ctx.checks);
      devShells = perSystem (ctx: { default = ctx.shell; });
      apps = perSystem (ctx: ctx.apps);
      formatter = perSystem (ctx: ctx.pkgs.nixfmt-rfc-style);
    };
}
