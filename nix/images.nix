# Distroless images with dockerTools.streamLayeredImage: the static binary, CA certificates and
# passwd/group for user 65532 — no shell, no package manager. Same contents as `cargo xtask images`.
{ pkgs, lib, services, binaries, version, revision }:
let
  # /etc/passwd and /etc/group naming the non-root user, as distroless images have.
  users = pkgs.runCommand "quilla-nonroot-user" { } ''
    mkdir -p $out/etc
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > $out/etc/passwd
    printf 'root:x:0:\nnonroot:x:65532:\n' > $out/etc/group
  '';

  image =
    service:
    let
      binary = binaries.${service.name};
      entrypoint = "${binary}/bin/${service.name}";
    in
    pkgs.dockerTools.streamLayeredImage {
      name = "quilla/${service.name}";
      tag = version;
      contents = [ binary pkgs.cacert users ];
      # Reproducible: no timestamp.
      created = "1970-01-01T00:00:01Z";
      config = {
        User = "65532:65532";
        Entrypoint = [ entrypoint ];
        Cmd = [ "serve" ];
        Env = [
          "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
          "QUILLA_SERVER__PORT=8080"
        ];
        ExposedPorts."8080/tcp" = { };
        Healthcheck = {
          Test = [ "CMD" entrypoint "healthcheck" ];
          Interval = 10000000000;
          Timeout = 3000000000;
          Retries = 3;
        };
        Labels = {
          "org.opencontainers.image.title" = service.name;
          "org.opencontainers.image.source" = "https://github.com/quilla/quilla";
          "org.opencontainers.image.revision" = revision;
          "org.opencontainers.image.version" = version;
          "org.opencontainers.image.licenses" = "Apache-2.0";
        };
      };
    };

  byName = lib.listToAttrs (map (service: lib.nameValuePair "image-${service.name}" (image service)) services);

  # `nix build .#images`: a directory with one image stream script per service.
  all = pkgs.linkFarm "quilla-images" (
    map (service: { name = service.name; path = byName."image-${service.name}"; }) services
  );

  # `nix run .#push-images -- <registry>`: streams every image into the registry with skopeo.
  push = pkgs.writeShellApplication {
    name = "push-images";
    runtimeInputs = [ pkgs.skopeo pkgs.gzip ];
    text = ''
      registry="''${1:?usage: push-images <registry, e.g. 123456789012.dkr.ecr.eu-south-2.amazonaws.com>}"
      ${lib.concatMapStrings (service: ''
        echo "pushing ${service.name}:${version}"
        ${byName."image-${service.name}"} | gzip --fast > image.tar.gz
        skopeo copy "docker-archive:image.tar.gz" "docker://$registry/quilla/${service.name}:${version}"
        rm -f image.tar.gz
      '') services}
    '';
  };
in
{
  inherit byName all push;
}
