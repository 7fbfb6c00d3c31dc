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
      # x86_64 only: nothing builds, tests or publishes an arm64 image (nix/README.md, "Systems").
      systems = [ "x86_64-linux" ];

      # Each system's context (nixpkgs, toolchain, packages, images, checks, shell), evaluated
      # once and shared by every output below.
      contexts = nixpkgs.lib.genAttrs systems (
        system: import ./nix/context.nix { inherit self nixpkgs crane rust-overlay system; }
      );
      perSystem = f: nixpkgs.lib.mapAttrs (_: f) contexts;
    in
    {
      packages = perSystem (ctx: ctx.packages); # services, image-<service>, images
      checks = perSystem (ctx: ctx.checks); # nix/checks.nix
      apps = perSystem (ctx: ctx.apps); # push-images
      devShells = perSystem (ctx: { default = ctx.shell; }); # nix/shell.nix
      formatter = perSystem (ctx: ctx.formatter); # nixfmt-tree
    };
}
