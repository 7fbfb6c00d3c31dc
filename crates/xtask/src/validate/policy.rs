//! Policy rules over one environment's rendered objects: what checkov cannot say about them (the image's
//! user, digests and their placeholder, network isolation and the call graph, CIDRs, no Secrets, prod
//! availability, secret prefixes, token issuers and data residency).
//!
//! The pod-security rules checkov enforces over the same rendered objects (security.rs, `.checkov.yaml`
//! skips nothing) are not repeated here; these checkov ids replaced these rules of ours:
//! - automountServiceAccountToken false: CKV_K8S_38
//! - no host PID, IPC or network namespace: CKV_K8S_17, CKV_K8S_18, CKV_K8S_19
//! - seccompProfile RuntimeDefault: CKV_K8S_31
//! - allowPrivilegeEscalation false: CKV_K8S_20; not privileged: CKV_K8S_16
//! - readOnlyRootFilesystem: CKV_K8S_22
//! - capabilities drop ALL: CKV_K8S_37; none added: CKV_K8S_25
//! - CPU and memory requests and limits: CKV_K8S_10, CKV_K8S_11, CKV_K8S_12, CKV_K8S_13
//! - liveness and readiness probes (not on Jobs): CKV_K8S_8, CKV_K8S_9
//! - no Secret in an environment variable (`env` or `envFrom`): CKV_K8S_35
//! - no `latest` or missing tag: CKV_K8S_14; images by digest: CKV_K8S_43 (every stage, not only prod)
//!
//! Kept although checkov has a neighbour: `runAsNonRoot: true` (CKV_K8S_23 passes `false` with a
//! non-zero UID; the restricted Pod Security Standard the namespace enforces does not) and
//! `runAsUser: 65532` (CKV_K8S_40 asks for any UID above 10000, not the image's user).

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::Value;

use super::Rendered;

/// Which workload may call which (caller, callee) by `app.kubernetes.io/name`. Anything else
/// between pods of the namespace is refused.
const ALLOWED_CALLS: &[(&str, &str)] = &[("transaction-api", "notification-service")];

/// Namespaces whose pods may reach every service's port (Prometheus scrapes `/metrics`).
const SCRAPER_NAMESPACES: &[&str] = &["monitoring"];

/// The only HTTP source a `webhook` store may read: AWS's public RDS certificate bundles,
/// `<this>/<region>/<region>-bundle.pem` (docs/adr/0008).
const RDS_TRUST_STORE: &str = "https://truststore.pki.rds.amazonaws.com/";

/// Chaos Mesh's API group (`chaos-mesh.org/v1alpha1`): the experiments of gitops/chaos.
const CHAOS_GROUP: &str = "chaos-mesh.org/";

/// The annotation naming the alert a chaos experiment must fire (an `alert` of a PrometheusRule).
const EXPECTED_ALERT: &str = "quilla.io/expected-alert";

/// The token issuers a service trusts: set on every Deployment, `https://<host>/auth` with
/// region.yaml's host put in by gitops/components/environment. Figment's inline syntax, which our
/// value keeps within TOML's, so it is read here as a TOML value.
const ISSUERS_VARIABLE: &str = "QUILLA_AUTH__ISSUERS";

/// An environment's `region.yaml`: the facts its overlay must use, and no other region's.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionFile {
    pub region: String,
    pub stage: String,
    pub aws_region: String,
    pub vpc_cidr: String,
    /// The public subnets' tier, where the ALBs are: the only source NetworkPolicies admit by address.
    pub alb_cidr: String,
    /// The data subnets' tier (RDS, ElastiCache): the only destination they reach by address.
    pub data_cidr: String,
    /// Where the nodes and pods are (VPC CNI): no ipBlock may overlap it.
    pub pod_cidr: String,
    pub host: String,
    pub secrets_prefix: String,
    pub ecr_registry: String,
    /// `placeholder` while the overlay's digests are all zeros (no Application is generated),
    /// `pinned` once promote.sh has pinned real ones.
    pub images: ImagesState,
}

/// Whether an environment's images are pinned yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImagesState {
    Placeholder,
    Pinned,
}

/// The digest of an image nobody pushed: the overlays' placeholder before the first promotion.
const PLACEHOLDER_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

impl RegionFile {
    /// Strings that identify this region; none may appear in another region's objects.
    fn identifiers(&self) -> [&str; 4] {
        [&self.aws_region, &self.host, &self.secrets_prefix, &self.ecr_registry]
    }
}

/// Every rule broken by `objects` (rendered from the overlay described by `region`), given the
/// region files of every environment (`all`). Empty when the environment is compliant.
pub fn check(region: &RegionFile, objects: &[Rendered], all: &[RegionFile]) -> Vec<String> {
    let mut errors = Vec::new();
    for rendered in objects {
        let mut fail = |message: String| errors.push(format!("{}: {message}", rendered.describe()));
        let object = &rendered.object;
        match object["kind"].as_str().unwrap_or_default() {
            "Secret" => fail("a Secret in git: credentials must come from an ExternalSecret".into()),
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                check_pod(&object["spec"]["template"]["spec"], region, &mut fail);
                // `migrate`, all a Job runs, reads no [auth].
                if object["kind"] != "Job" {
                    check_issuers(&object["spec"]["template"]["spec"], region, all, &mut fail);
                }
            }
            "Namespace" => check_namespace(object, objects, &mut fail),
            "NetworkPolicy" => {
                check_network_policy(object, &mut fail);
                let (ingress, egress) = ip_blocks(object);
                for cidr in ingress.iter().filter(|cidr| **cidr != region.alb_cidr) {
                    fail(format!("ingress ipBlock {cidr} is not the environment's ALB tier {}", region.alb_cidr));
                }
                for cidr in egress.iter().filter(|cidr| **cidr != region.data_cidr) {
                    fail(format!("egress ipBlock {cidr} is not the environment's data tier {}", region.data_cidr));
                }
            }
            "HorizontalPodAutoscaler"
                if region.stage == "prod" && object["spec"]["minReplicas"].as_u64().unwrap_or(1) < 2 =>
            {
                fail("prod HorizontalPodAutoscaler minReplicas must be at least 2".into());
            }
            "ClusterSecretStore" | "SecretStore" => match object["spec"]["provider"]["webhook"]["url"].as_str() {
                Some(url) if !url.starts_with(RDS_TRUST_STORE) => {
                    fail(format!("webhook store URL `{url}`: only {RDS_TRUST_STORE} (the RDS CA bundles) may be read"));
                }
                Some(_) => {}
                None => {
                    let aws = &object["spec"]["provider"]["aws"];
                    let store_region = aws["region"].as_str().unwrap_or_default();
                    if store_region != region.aws_region {
                        fail(format!("store region `{store_region}`, expected `{}`", region.aws_region));
                    }
                    let prefix = aws["prefix"].as_str().unwrap_or_default();
                    if prefix != format!("{}/", region.secrets_prefix) {
                        fail(format!("store prefix `{prefix}`, expected `{}/`", region.secrets_prefix));
                    }
                }
            },
            "ConfigMap" => check_service_config(object, &mut fail),
            "ExternalSecret" => check_external_secret(object, objects, region, &mut fail),
            _ => {}
        }
        if object["apiVersion"].as_str().is_some_and(|version| version.starts_with(CHAOS_GROUP)) {
            check_chaos(object, objects, region, &mut fail);
        }
        if region.stage == "prod" && object["kind"] == "Deployment" && !has_disruption_budget(object, objects) {
            fail("prod Deployment without a PodDisruptionBudget selecting its pods".into());
        }
        let text = object.to_string();
        for other in all.iter().filter(|other| other.region != region.region) {
            for identifier in other.identifiers() {
                if text.contains(identifier) {
                    fail(format!("references `{identifier}` of region {} (data residency)", other.region));
                }
            }
        }
    }
    errors
}

/// An ExternalSecret reads named entries relative to its store's prefix (the environment's, checked
/// on the store), from a store the environment renders: `find` and generators (`sourceRef`) would
/// escape the prefix. One reading the RDS trust store (a `webhook` store) reads the environment's
/// own region's bundle.
fn check_external_secret(object: &Value, objects: &[Rendered], region: &RegionFile, fail: &mut impl FnMut(String)) {
    let spec = &object["spec"];
    let store = &spec["secretStoreRef"];
    let webhook_store = objects.iter().any(|other| {
        other.object["kind"] == store["kind"]
            && other.object["metadata"]["name"] == store["name"]
            && !other.object["spec"]["provider"]["webhook"].is_null()
    });
    // An absolute key would be read as `<prefix><key>`, i.e. under the prefix twice.
    let root = &format!("{}/", region.secrets_prefix.split('/').next().unwrap_or_default());
    for key in remote_keys(object) {
        if webhook_store {
            if key != region.aws_region {
                fail(format!("trust-store key `{key}` is not the environment's region `{}`", region.aws_region));
            }
        } else if key.starts_with('/')
            || key.split('/').any(|part| part.is_empty() || part == "..")
            || key.starts_with(root)
        {
            fail(format!(
                "remote key `{key}` must be relative to the store's prefix `{}/` (e.g. `transaction-api/database`)",
                region.secrets_prefix
            ));
        }
    }
    let entries = spec["data"].as_array().into_iter().chain(spec["dataFrom"].as_array()).flatten();
    if entries.clone().any(|entry| !entry["sourceRef"].is_null() || !entry["find"].is_null()) {
        fail("`find` and `sourceRef` are not allowed: name each entry with remoteRef.key or extract.key".into());
    }
    if spec["dataFrom"].as_array().into_iter().flatten().any(|entry| entry["extract"]["key"].is_null()) {
        fail("every dataFrom entry must be an `extract` of a named entry".into());
    }
    let rendered_store = objects
        .iter()
        .any(|other| other.object["kind"] == store["kind"] && other.object["metadata"]["name"] == store["name"]);
    if store["kind"] != "ClusterSecretStore" || !rendered_store {
        fail(format!("secretStoreRef {} is not a ClusterSecretStore this environment renders", store));
    }
}

/// The Secrets Manager entries an ExternalSecret reads (`data[].remoteRef.key`, `dataFrom[].extract.key`).
fn remote_keys(external_secret: &Value) -> impl Iterator<Item = &str> {
    let spec = &external_secret["spec"];
    let data = spec["data"].as_array().into_iter().flatten().map(|entry| &entry["remoteRef"]["key"]);
    let data_from = spec["dataFrom"].as_array().into_iter().flatten().map(|entry| &entry["extract"]["key"]);
    data.chain(data_from).filter_map(Value::as_str)
}

fn check_pod(pod: &Value, region: &RegionFile, fail: &mut impl FnMut(String)) {
    let pod_security = &pod["securityContext"];
    let containers = pod["initContainers"].as_array().into_iter().chain(pod["containers"].as_array()).flatten();
    for container in containers {
        let name = container["name"].as_str().unwrap_or("<unnamed>");
        let mut fail = |message: &str| fail(format!("container {name}: {message}"));
        let security = &container["securityContext"];
        let effective = |key: &str| {
            if security[key].is_null() { pod_security[key].clone() } else { security[key].clone() }
        };
        if effective("runAsNonRoot") != true {
            fail("runAsNonRoot must be true");
        }
        if effective("runAsUser") != 65532 {
            fail("runAsUser must be 65532 (the image's non-root user)");
        }
        let image = container["image"].as_str().unwrap_or_default();
        if image_digest_malformed(image) {
            fail(&format!("image `{image}`: malformed digest (sha256: and 64 lowercase hex digits)"));
        }
        let placeholder = image.ends_with(&format!("@{PLACEHOLDER_DIGEST}"));
        match region.images {
            ImagesState::Pinned if placeholder => {
                fail(&format!("image `{image}`: the placeholder digest in an environment whose images are `pinned`"));
            }
            ImagesState::Placeholder if !placeholder => fail(&format!(
                "image `{image}`: region.yaml says `images: placeholder` (no Application is generated) but this \
                 image is pinned: set `images: pinned`"
            )),
            _ => {}
        }
        let mut aws_regions = env_values(container, "QUILLA_AWS__REGION");
        if aws_regions.is_empty() {
            aws_regions.push(None);
        }
        for aws_region in aws_regions.into_iter().filter(|set| *set != Some(region.aws_region.as_str())) {
            fail(&format!("env QUILLA_AWS__REGION is {aws_region:?}, expected `{}`", region.aws_region));
        }
    }
}

/// A Chaos Mesh experiment (or Schedule) runs only outside prod, names an alert of a PrometheusRule the
/// environment renders, and disturbs only what the NetworkPolicies allow: the traffic of an allowed
/// call (its requests or its replies: any `direction` between the caller and the callee), or to the
/// environment's data tier.
fn check_chaos(object: &Value, objects: &[Rendered], region: &RegionFile, fail: &mut impl FnMut(String)) {
    if region.stage == "prod" {
        fail("a chaos experiment in prod: gitops/chaos is for dev environments only".into());
    }
    let alerts: Vec<&str> = (objects.iter())
        .filter(|rendered| rendered.object["kind"] == "PrometheusRule")
        .flat_map(|rendered| rendered.object["spec"]["groups"].as_array().into_iter().flatten())
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    match object["metadata"]["annotations"][EXPECTED_ALERT].as_str() {
        None => fail(format!("no {EXPECTED_ALERT} annotation: name the alert this experiment must fire")),
        Some(alert) if !alerts.contains(&alert) => {
            fail(format!("{EXPECTED_ALERT} `{alert}` is not an alert of the environment's PrometheusRules"));
        }
        Some(_) => {}
    }
    // A Schedule carries its experiment's spec under the kind's camelCase name (`networkChaos`).
    let spec = match object["kind"].as_str() {
        Some("Schedule") => &object["spec"]["networkChaos"],
        Some("NetworkChaos") => &object["spec"],
        _ => return,
    };
    if spec.is_null() {
        return;
    }
    let name = |selector: &Value| selector["labelSelectors"]["app.kubernetes.io/name"].as_str().map(str::to_owned);
    let source = name(&spec["selector"]);
    if !spec["target"].is_null() {
        let target = name(&spec["target"]["selector"]);
        let allowed = match (&source, &target) {
            (Some(one), Some(other)) => (ALLOWED_CALLS.iter())
                .any(|&(caller, callee)| (caller, callee) == (one, other) || (callee, caller) == (one, other)),
            _ => false,
        };
        if !allowed {
            fail(format!(
                "NetworkChaos between {source:?} and {target:?} is not along an allowed call {ALLOWED_CALLS:?}"
            ));
        }
    }
    for external in spec["externalTargets"].as_array().into_iter().flatten() {
        if external.as_str() != Some(region.data_cidr.as_str()) {
            fail(format!(
                "NetworkChaos external target {external} is not the environment's data tier {}",
                region.data_cidr
            ));
        }
    }
}

/// Every value `container` gives the variable `name`, `None` for one from `valueFrom`. The kubelet
/// keeps the last of duplicates, and an overlay's patch may append one: each must pass.
fn env_values<'a>(container: &'a Value, name: &str) -> Vec<Option<&'a str>> {
    (container["env"].as_array().into_iter().flatten())
        .filter(|variable| variable["name"] == name)
        .map(|variable| variable["value"].as_str())
        .collect()
}

/// A serving pod accepts tokens from exactly one issuer, its own environment's `https://<host>/auth`:
/// never another environment's, whose tokens speak for another stage's or country's customers.
fn check_issuers(pod: &Value, region: &RegionFile, all: &[RegionFile], fail: &mut impl FnMut(String)) {
    let expected = format!("https://{}/auth", region.host);
    for container in pod["containers"].as_array().into_iter().flatten() {
        let name = container["name"].as_str().unwrap_or("<unnamed>");
        let mut fail = |message: String| fail(format!("container {name}: {message}"));
        let values = env_values(container, ISSUERS_VARIABLE);
        if values.is_empty() {
            fail(format!(
                "env {ISSUERS_VARIABLE} is missing: the service would trust no token issuer (expected `{expected}`)"
            ));
        }
        for value in values {
            let issuers = match value.ok_or("is not a plain value".to_owned()).and_then(trusted_issuers) {
                Ok(issuers) => issuers,
                Err(problem) => {
                    fail(format!("env {ISSUERS_VARIABLE} {problem}"));
                    continue;
                }
            };
            if issuers != [expected.as_str()] {
                fail(format!(
                    "trusts the token issuers {issuers:?}, expected exactly [\"{expected}\"] (region.yaml's host)"
                ));
            }
            for issuer in &issuers {
                let host = url::Url::parse(issuer).ok().and_then(|url| url.host_str().map(str::to_owned));
                for other in all.iter().filter(|other| other.host != region.host && host.as_ref() == Some(&other.host))
                {
                    let residency = if other.region == region.region { "" } else { " (data residency)" };
                    fail(format!("trusts `{issuer}`, the issuer of {}/{}{residency}", other.region, other.stage));
                }
            }
        }
    }
}

/// The `issuer` of each table in `value`, e.g. `[{issuer = "https://…/auth", jwks_file = "…"}]`.
fn trusted_issuers(value: &str) -> Result<Vec<String>, String> {
    let shape = "is not a list of issuer tables (`[{issuer = \"…\", jwks_file = \"…\"}]`)";
    let table = format!("issuers = {value}").parse::<toml::Table>().map_err(|error| format!("{shape}: {error}"))?;
    let issuers = table["issuers"].as_array().ok_or(shape)?;
    (issuers.iter())
        .map(|issuer| issuer.get("issuer").and_then(toml::Value::as_str).map(str::to_owned).ok_or(shape.to_owned()))
        .collect()
}

/// Whether `image` names a digest that is not `sha256:` and 64 lowercase hex digits (checkov's
/// CKV_K8S_43 only asks for an `@`).
fn image_digest_malformed(image: &str) -> bool {
    image.split_once('@').is_some_and(|(_, digest)| {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

fn check_namespace(namespace: &Value, objects: &[Rendered], fail: &mut impl FnMut(String)) {
    let name = namespace["metadata"]["name"].as_str().unwrap_or_default();
    if namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] != "restricted" {
        fail("namespace must enforce the restricted Pod Security Standard".into());
    }
    let default_deny = objects.iter().any(|rendered| {
        let policy = &rendered.object;
        let types = policy["spec"]["policyTypes"].as_array().cloned().unwrap_or_default();
        policy["kind"] == "NetworkPolicy"
            && policy["metadata"]["namespace"] == name
            && policy["spec"]["podSelector"].as_object().is_some_and(|selector| selector.values().all(is_empty))
            && types.contains(&"Ingress".into())
            && types.contains(&"Egress".into())
            && is_empty(&policy["spec"]["ingress"])
            && is_empty(&policy["spec"]["egress"])
    });
    if !default_deny {
        fail("no default-deny NetworkPolicy (all pods, Ingress and Egress, no rules)".into());
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Ingress rules may admit only known callers: the allowed workload pairs, the scrapers, and
/// address blocks narrower than the internet.
fn check_network_policy(policy: &Value, fail: &mut impl FnMut(String)) {
    let callee = policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str();
    for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
        let peers = rule["from"].as_array().cloned().unwrap_or_default();
        if peers.is_empty() {
            fail("an ingress rule without `from` admits every caller".into());
        }
        for peer in peers {
            let namespace = &peer["namespaceSelector"];
            let pods = &peer["podSelector"];
            if let Some(cidr) = peer["ipBlock"]["cidr"].as_str() {
                if cidr.ends_with("/0") {
                    fail(format!("ingress from {cidr} admits the internet"));
                }
                continue;
            }
            if !namespace.is_null() {
                let scraper = namespace["matchLabels"]["kubernetes.io/metadata.name"].as_str();
                if !scraper.is_some_and(|name| SCRAPER_NAMESPACES.contains(&name)) || is_empty(pods) {
                    fail(format!("ingress from namespaces {namespace} is not an allowed caller"));
                }
                continue;
            }
            let caller = pods["matchLabels"]["app.kubernetes.io/name"].as_str();
            let allowed = match (caller, callee) {
                (Some(caller), Some(callee)) => ALLOWED_CALLS.contains(&(caller, callee)),
                _ => false,
            };
            if !allowed {
                fail(format!("ingress from pods {pods} to {} is not an allowed call", callee.unwrap_or("every pod")));
            }
        }
    }
}

/// Every `ipBlock.cidr` a NetworkPolicy admits or reaches.
/// The `ipBlock.cidr`s a NetworkPolicy admits (ingress) and reaches (egress).
fn ip_blocks(policy: &Value) -> (Vec<String>, Vec<String>) {
    let cidrs = |rules: &Value, peers: &str| -> Vec<String> {
        (rules.as_array().into_iter().flatten())
            .flat_map(|rule| rule[peers].as_array().cloned().unwrap_or_default())
            .filter_map(|peer| peer["ipBlock"]["cidr"].as_str().map(str::to_owned))
            .collect()
    };
    (cidrs(&policy["spec"]["ingress"], "from"), cidrs(&policy["spec"]["egress"], "to"))
}

/// A configuration layer (a service's ConfigMap, or the stage's): none may pick an AWS region or
/// the token issuers (the pods get the environment's as QUILLA_AWS__REGION and QUILLA_AUTH__ISSUERS,
/// checked on the pod), and a service's `environment.toml`, which QUILLA_CONFIG lists, exists.
fn check_service_config(config_map: &Value, fail: &mut impl FnMut(String)) {
    let Some(data) = config_map["data"].as_object() else { return };
    for (name, text) in data.iter().filter(|(name, _)| name.ends_with(".toml")) {
        match text.as_str().unwrap_or_default().parse::<toml::Table>() {
            Ok(table) => {
                if let Some(set) = table.get("aws").and_then(|aws| aws.get("region")) {
                    fail(format!("{name} sets aws.region {set}: the environment sets it (QUILLA_AWS__REGION)"));
                }
                if table.get("auth").and_then(|auth| auth.get("issuers")).is_some() {
                    fail(format!(
                        "{name} sets auth.issuers: the environment sets them from its host ({ISSUERS_VARIABLE})"
                    ));
                }
            }
            Err(error) => fail(format!("{name} is not TOML: {error}")),
        }
    }
    if data.contains_key("config.toml") && !data.contains_key("environment.toml") {
        fail("no environment.toml: QUILLA_CONFIG lists it (gitops/apps/<service>/environment.toml)".into());
    }
}

/// An environment's facts are consistent: its tiers inside its VPC, apart from each other and from
/// the pods' addresses, so an ipBlock can never admit a pod.
pub fn check_region_file(region: &RegionFile) -> Vec<String> {
    let tiers = [
        ("vpcCidr", &region.vpc_cidr),
        ("albCidr", &region.alb_cidr),
        ("dataCidr", &region.data_cidr),
        ("podCidr", &region.pod_cidr),
    ];
    let mut parsed = Vec::new();
    for (name, cidr) in tiers {
        match cidr.parse::<Ipv4Net>() {
            Ok(net) if net.trunc() == net => parsed.push((name, net)),
            Ok(_) => return vec![format!("{name} `{cidr}` has host bits set")],
            Err(error) => return vec![format!("{name} `{cidr}`: {error}")],
        }
    }
    let mut problems = Vec::new();
    let vpc = parsed[0].1;
    for (i, (name, tier)) in parsed.iter().enumerate().skip(1) {
        if !vpc.contains(tier) {
            problems.push(format!("{name} {tier} is not inside vpcCidr {vpc}"));
        }
        for (other, other_tier) in parsed.iter().skip(i + 1) {
            if tier.contains(other_tier) || other_tier.contains(tier) {
                problems.push(format!("{name} {tier} overlaps {other} {other_tier}"));
            }
        }
    }
    problems
}

fn has_disruption_budget(deployment: &Value, objects: &[Rendered]) -> bool {
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let namespace = &deployment["metadata"]["namespace"];
    objects.iter().any(|rendered| {
        let budget = &rendered.object;
        budget["kind"] == "PodDisruptionBudget"
            && &budget["metadata"]["namespace"] == namespace
            && budget["spec"]["selector"]["matchLabels"]
                .as_object()
                .is_some_and(|labels| !labels.is_empty() && labels.iter().all(|(key, value)| &pod_labels[key] == value))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn region(name: &str, stage: &str, aws_region: &str) -> RegionFile {
        RegionFile {
            region: name.into(),
            stage: stage.into(),
            aws_region: aws_region.into(),
            vpc_cidr: "10.0.0.0/16".into(),
            alb_cidr: "10.0.0.0/20".into(),
            data_cidr: "10.0.16.0/20".into(),
            pod_cidr: "10.0.128.0/17".into(),
            host: format!("api.{name}.example"),
            secrets_prefix: format!("quilla/{name}/{stage}"),
            ecr_registry: format!("1.dkr.ecr.{aws_region}.amazonaws.com"),
            images: ImagesState::Pinned,
        }
    }

    fn spain() -> RegionFile {
        region("spain", "prod", "eu-south-2")
    }

    fn all() -> Vec<RegionFile> {
        vec![spain(), region("mexico", "prod", "mx-central-1")]
    }

    fn rendered(object: Value) -> Rendered {
        Rendered { source: "fixture".into(), object }
    }

    /// QUILLA_AUTH__ISSUERS trusting `issuers`, each with its keys in a file, as the Deployments set it.
    fn issuers(issuers: &[&str]) -> String {
        let tables: Vec<String> = (issuers.iter())
            .map(|issuer| format!("{{issuer = \"{issuer}\", jwks_file = \"/etc/quilla/auth/jwks.json\"}}"))
            .collect();
        format!("[{}]", tables.join(", "))
    }

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    /// A compliant prod environment: namespace, default deny, a Deployment with its PDB and HPA,
    /// the allowed call, the store and the service config.
    fn good() -> Vec<Value> {
        vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "quilla",
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "default-deny", "namespace": "quilla"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "notification-service", "namespace": "quilla"},
                "spec": {"template": {"metadata": {"labels": {"app.kubernetes.io/name": "notification-service"}},
                    "spec": {"automountServiceAccountToken": false,
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{"name": "app", "image": format!("registry/quilla/app@{DIGEST}"),
                            "env": [{"name": "QUILLA_AWS__REGION", "value": "eu-south-2"},
                                {"name": ISSUERS_VARIABLE, "value": issuers(&["https://api.spain.example/auth"])}],
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}},
                            "resources": {"requests": {"cpu": "1", "memory": "1Mi"},
                                "limits": {"cpu": "1", "memory": "1Mi"}},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}}}]}}}}),
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "notification-service", "namespace": "quilla"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "notification-service"}}}}),
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "notification-service", "namespace": "quilla"},
                "spec": {"minReplicas": 2, "maxReplicas": 4}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "notification-service", "namespace": "quilla"},
                "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "notification-service"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "transaction-api"}}},
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}]}}),
            json!({"apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore",
                "metadata": {"name": "aws"}, "spec": {"provider": {"aws": {"region": "eu-south-2", "prefix": "quilla/spain/prod/"}}}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "quilla"},
                "data": {"config.toml": "[server]\nport = 8080\n", "environment.toml": "[telemetry]\nlog_level = \"info\"\n"}}),
            json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                "metadata": {"name": "notification-service", "namespace": "quilla"},
                "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "aws"}, "dataFrom": [{"extract": {"key": "notification-service/database"}}],
                    "data": [{"secretKey": "k", "remoteRef": {"key": "webhook-signing-key"}}]}}),
        ]
    }

    fn errors_after(change: impl FnOnce(&mut Vec<Value>)) -> Vec<String> {
        let mut objects = good();
        change(&mut objects);
        let objects: Vec<Rendered> = objects.into_iter().map(rendered).collect();
        check(&spain(), &objects, &all())
    }

    /// Asserts the change is refused with a message containing `expected`.
    fn refused(expected: &str, change: impl FnOnce(&mut Vec<Value>)) {
        let errors = errors_after(change);
        assert!(errors.iter().any(|e| e.contains(expected)), "expected `{expected}` among {errors:#?}");
    }

    fn container(objects: &mut [Value]) -> &mut Value {
        &mut objects[2]["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn a_job_runs_as_the_images_user_and_trusts_no_issuer() {
        let job = |o: &mut Vec<Value>| {
            let mut job = o[2].clone();
            job["kind"] = json!("Job");
            let container = &mut job["spec"]["template"]["spec"]["containers"][0];
            container["env"].as_array_mut().map(|env| env.remove(1));
            job
        };
        assert_eq!(
            errors_after(|o| {
                let job = job(o);
                o.push(job);
            }),
            Vec::<String>::new()
        );
        refused("runAsUser must be 65532", |o| {
            let mut job = job(o);
            job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = json!(0);
            o.push(job);
        });
    }

    /// The RDS CA bundle store and its ExternalSecret, as gitops/platform/rds-ca-bundle.yaml renders.
    fn with_trust_store(objects: &mut Vec<Value>, url: &str, key: &str) {
        objects.push(json!({"apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore",
            "metadata": {"name": "rds-ca-bundle"}, "spec": {"provider": {"webhook": {"url": url}}}}));
        objects.push(json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "metadata": {"name": "rds-ca-bundle", "namespace": "quilla"},
            "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "rds-ca-bundle"},
                "data": [{"secretKey": "bundle.pem", "remoteRef": {"key": key}}]}}));
    }

    #[test]
    fn a_webhook_store_reads_only_the_regions_rds_ca_bundle() {
        let store = "https://truststore.pki.rds.amazonaws.com/{{ .remoteRef.key }}/{{ .remoteRef.key }}-bundle.pem";
        assert_eq!(errors_after(|o| with_trust_store(o, store, "eu-south-2")), Vec::<String>::new());
        refused("only https://truststore.pki.rds.amazonaws.com/", |o| {
            with_trust_store(o, "https://attacker.example/{{ .remoteRef.key }}", "eu-south-2");
        });
        refused("is not the environment's region `eu-south-2`", |o| with_trust_store(o, store, "us-east-1"));
        refused("(data residency)", |o| with_trust_store(o, store, "mx-central-1"));
    }

    #[test]
    fn the_compliant_environment_passes() {
        assert_eq!(errors_after(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn a_secret_manifest_is_refused() {
        refused("a Secret in git", |o| {
            o.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}))
        });
    }

    /// The rest of pod security (privileges, capabilities, seccomp, read-only root, token mount,
    /// resources, probes, Secrets in variables, `latest`) is checkov's: security.rs tests that it is found.
    #[test]
    fn pods_run_as_the_images_non_root_user() {
        refused("runAsNonRoot", |o| o[2]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = json!(false));
        refused("runAsNonRoot", |o| {
            o[2]["spec"]["template"]["spec"]["securityContext"].as_object_mut().map(|s| s.remove("runAsNonRoot"));
        });
        refused("runAsUser", |o| container(o)["securityContext"]["runAsUser"] = json!(0));
        refused("runAsUser", |o| o[2]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = json!(10001));
    }

    #[test]
    fn image_digests_are_well_formed() {
        refused("malformed digest", |o| container(o)["image"] = json!("registry/quilla/app@sha256:abc"));
        refused("malformed digest", |o| {
            container(o)["image"] = json!(format!("registry/quilla/app@md5:{}", &DIGEST[7..]))
        });
        assert!(!image_digest_malformed("registry:5000/quilla/app:1.2.3"));
        assert!(!image_digest_malformed(&format!("registry:5000/quilla/app@{DIGEST}")));
        assert!(image_digest_malformed(&format!("registry/quilla/app@{}", DIGEST.to_uppercase())));
    }

    #[test]
    fn every_namespace_needs_restricted_security_and_default_deny() {
        refused("restricted Pod Security", |o| o[0]["metadata"]["labels"] = json!({}));
        refused("default-deny", |o| {
            o.remove(1);
        });
        refused("default-deny", |o| o[1]["spec"]["ingress"] = json!([{}]));
        refused("default-deny", |o| o[1]["spec"]["policyTypes"] = json!(["Ingress"]));
    }

    #[test]
    fn services_are_reachable_only_by_their_callers() {
        refused("admits every caller", |o| o[5]["spec"]["ingress"] = json!([{}]));
        refused("not an allowed call", |o| {
            o[5]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] =
                json!("someone-else");
        });
        refused("not an allowed call", |o| o[5]["spec"]["ingress"][0]["from"] = json!([{"podSelector": {}}]));
        refused("not an allowed caller", |o| {
            o[5]["spec"]["ingress"][0]["from"] = json!([{"namespaceSelector": {}}]);
        });
        refused("admits the internet", |o| {
            o[5]["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "0.0.0.0/0"}}]);
        });
        // The reverse call is not allowed either.
        refused("not an allowed call", |o| {
            o[5]["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] = json!("transaction-api");
        });
    }

    #[test]
    fn prod_needs_two_replicas_and_a_disruption_budget() {
        refused("minReplicas must be at least 2", |o| o[4]["spec"]["minReplicas"] = json!(1));
        refused("without a PodDisruptionBudget", |o| {
            o.remove(3);
        });
        refused("without a PodDisruptionBudget", |o| {
            o[3]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = json!("other");
        });
    }

    #[test]
    fn placeholder_digests_only_while_region_yaml_says_so() {
        let placeholder = format!("registry/quilla/app@{PLACEHOLDER_DIGEST}");
        refused("the placeholder digest in an environment whose images are `pinned`", |o| {
            container(o)["image"] = json!(placeholder.clone());
        });
        let mut waiting = spain();
        waiting.images = ImagesState::Placeholder;
        let errors = |change: &dyn Fn(&mut Vec<Value>)| {
            let mut objects = good();
            change(&mut objects);
            let rendered: Vec<Rendered> = objects.into_iter().map(rendered).collect();
            check(&waiting, &rendered, &all())
        };
        assert_eq!(errors(&|o| container(o)["image"] = json!(placeholder.clone())), Vec::<String>::new());
        let stale = errors(&|_| {});
        assert!(stale.iter().any(|e| e.contains("set `images: pinned`")), "{stale:?}");
    }

    #[test]
    fn a_service_trusts_only_its_own_environments_token_issuer() {
        let trusting = |list: &[&str]| {
            let value = issuers(list);
            move |o: &mut Vec<Value>| container(o)["env"][1]["value"] = json!(value)
        };
        // A Spain overlay naming Mexico's issuer: not this environment's, and another country's.
        let mexico = trusting(&["https://api.mexico.example/auth"]);
        refused(r#"trusts the token issuers ["https://api.mexico.example/auth"], expected exactly"#, mexico.clone());
        refused("the issuer of mexico/prod (data residency)", mexico);
        refused(
            "the issuer of mexico/prod (data residency)",
            trusting(&["https://api.spain.example/auth", "https://api.mexico.example/auth"]),
        );
        // Exactly its own: not another stage's of its country, another path or scheme, or none.
        let dev = RegionFile { host: "api.dev.spain.example".into(), ..region("spain", "dev", "eu-south-2") };
        let with_dev = [all(), vec![dev]].concat();
        let mut objects = good();
        container(&mut objects)["env"][1]["value"] = json!(issuers(&["https://api.dev.spain.example/auth"]));
        let errors = check(&spain(), &objects.into_iter().map(rendered).collect::<Vec<_>>(), &with_dev);
        assert!(errors.iter().any(|e| e.ends_with("the issuer of spain/dev")), "{errors:#?}");
        refused(
            r#"expected exactly ["https://api.spain.example/auth"]"#,
            trusting(&["https://api.spain.example/other"]),
        );
        refused(r#"expected exactly ["https://api.spain.example/auth"]"#, trusting(&["http://api.spain.example/auth"]));
        refused(r#"expected exactly ["https://api.spain.example/auth"]"#, trusting(&[]));
        // An overlay's patch appending a second variable: the kubelet would keep that one.
        refused("the issuer of mexico/prod (data residency)", |o| {
            let mexico = json!({"name": ISSUERS_VARIABLE, "value": issuers(&["https://api.mexico.example/auth"])});
            container(o)["env"].as_array_mut().expect("env").push(mexico);
        });
        refused("env QUILLA_AUTH__ISSUERS is not a plain value", |o| {
            container(o)["env"][1] =
                json!({"name": ISSUERS_VARIABLE, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}});
        });
        refused("env QUILLA_AUTH__ISSUERS is missing", |o| {
            container(o)["env"].as_array_mut().map(|env| env.remove(1));
        });
        refused("env QUILLA_AUTH__ISSUERS is not a list of issuer tables", |o| {
            container(o)["env"][1]["value"] = json!("https://api.spain.example/auth");
        });
        refused("env QUILLA_AUTH__ISSUERS is not a list of issuer tables", |o| {
            container(o)["env"][1]["value"] = json!(r#"[{jwks_file = "/etc/quilla/auth/jwks.json"}]"#);
        });
        // No configuration layer names issuers: the variable would override them anyway.
        refused("environment.toml sets auth.issuers", |o| {
            o[7]["data"]["environment.toml"] = json!("[[auth.issuers]]\nissuer = \"https://api.spain.example/auth\"\n");
        });
        refused("stage.toml sets auth.issuers", |o| {
            o.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "quilla-stage-config", "namespace": "quilla"},
                "data": {"stage.toml": "[auth]\nissuers = []\n"}}));
        });
        // A Job runs `migrate`, which reads no [auth].
        let errors = errors_after(|o| {
            let mut job = o[2].clone();
            job["kind"] = json!("Job");
            let container = &mut job["spec"]["template"]["spec"]["containers"][0];
            container["env"].as_array_mut().map(|env| env.remove(1));
            o.push(job);
        });
        assert_eq!(errors, Vec::<String>::new());
    }

    #[test]
    fn an_environments_tiers_sit_inside_its_vpc_apart_from_its_pods() {
        assert_eq!(check_region_file(&spain()), Vec::<String>::new());
        let with = |change: &dyn Fn(&mut RegionFile)| {
            let mut region = spain();
            change(&mut region);
            check_region_file(&region).join("; ")
        };
        assert!(with(&|r| r.alb_cidr = "10.9.0.0/20".into()).contains("albCidr 10.9.0.0/20 is not inside vpcCidr"));
        assert!(with(&|r| r.data_cidr = "10.0.128.0/24".into()).contains("dataCidr 10.0.128.0/24 overlaps podCidr"));
        assert!(with(&|r| r.alb_cidr = "10.0.0.0/16".into()).contains("overlaps"));
        assert!(with(&|r| r.pod_cidr = "10.0.128.1/17".into()).contains("host bits"));
        assert!(with(&|r| r.vpc_cidr = "10.0.0.0/33".into()).contains("vpcCidr"));
    }

    #[test]
    fn data_stays_in_its_region() {
        refused("mx-central-1` of region mexico", |o| {
            o[6]["spec"]["provider"]["aws"]["region"] = json!("mx-central-1");
        });
        refused("store region", |o| o[6]["spec"]["provider"]["aws"]["region"] = json!("eu-west-1"));
        refused("of region mexico", |o| {
            container(o)["image"] = json!(format!("1.dkr.ecr.mx-central-1.amazonaws.com/app@{DIGEST}"))
        });
        refused("quilla/mexico/prod` of region mexico", |o| {
            o[6]["spec"]["provider"]["aws"]["prefix"] = json!("quilla/mexico/prod/");
        });
        // The region comes from the environment, as QUILLA_AWS__REGION; no config layer picks one.
        refused("env QUILLA_AWS__REGION is Some(\"mx-central-1\")", |o| {
            container(o)["env"][0]["value"] = json!("mx-central-1");
        });
        refused("env QUILLA_AWS__REGION is None", |o| container(o)["env"] = json!([]));
        refused("env QUILLA_AWS__REGION is Some(\"mx-central-1\")", |o| {
            let mexico = json!({"name": "QUILLA_AWS__REGION", "value": "mx-central-1"});
            container(o)["env"].as_array_mut().expect("env").push(mexico);
        });
        refused("environment.toml sets aws.region", |o| {
            o[7]["data"]["environment.toml"] = json!("[aws]\nregion = \"eu-south-2\"\n");
        });
        refused("config.toml sets aws.region", |o| {
            o[7]["data"]["config.toml"] = json!("[aws]\nregion = \"eu-south-2\"\n")
        });
        refused("no environment.toml", |o| {
            o[7]["data"].as_object_mut().map(|data| data.remove("environment.toml"));
        });
        // Keys are relative to the store's prefix, which must be the environment's.
        refused("store prefix `quilla/spain/dev/`", |o| {
            o[6]["spec"]["provider"]["aws"]["prefix"] = json!("quilla/spain/dev/");
        });
        refused("store prefix ``", |o| {
            o[6]["spec"]["provider"]["aws"].as_object_mut().map(|aws| aws.remove("prefix"));
        });
        refused("remote key `quilla/spain/dev/notification-service/database` must be relative", |o| {
            o[8]["spec"]["dataFrom"][0]["extract"]["key"] = json!("quilla/spain/dev/notification-service/database");
        });
        refused("remote key `../dev/webhook-signing-key` must be relative", |o| {
            o[8]["spec"]["data"][0]["remoteRef"]["key"] = json!("../dev/webhook-signing-key");
        });
        refused("`find` and `sourceRef` are not allowed", |o| {
            o[8]["spec"]["dataFrom"][0] = json!({"find": {"name": {"regexp": ".*"}}});
        });
        refused("`find` and `sourceRef` are not allowed", |o| {
            o[8]["spec"]["data"][0]["sourceRef"] = json!({"storeRef": {"kind": "ClusterSecretStore", "name": "other"}});
        });
        refused("is not a ClusterSecretStore this environment renders", |o| {
            o[8]["spec"]["secretStoreRef"]["name"] = json!("aws-secrets-manager-mexico");
        });
        refused("egress ipBlock 10.0.0.0/16 is not the environment's data tier 10.0.16.0/20", |o| {
            o[5]["spec"]["egress"] = json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}]}]);
        });
        refused("ingress ipBlock 10.0.16.0/20 is not the environment's ALB tier 10.0.0.0/20", |o| {
            o[5]["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "10.0.16.0/20"}}]);
        });
        refused("config.toml is not TOML", |o| o[7]["data"]["config.toml"] = json!("[telemetry\n"));
    }

    /// The webhook-path delay of gitops/chaos: transaction-api → notification-service.
    fn webhook_delay() -> Value {
        json!({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
            "metadata": {"name": "webhook-delay", "namespace": "quilla",
                "annotations": {EXPECTED_ALERT: "QuillaOutboxBacklogGrowing"}},
            "spec": {"action": "delay", "mode": "all", "direction": "to",
                "selector": {"labelSelectors": {"app.kubernetes.io/name": "transaction-api"}},
                "target": {"mode": "all", "selector": {"labelSelectors": {"app.kubernetes.io/name": "notification-service"}}},
                "delay": {"latency": "3s"}}})
    }

    /// The errors of `experiments` in `region`, beside a PrometheusRule with the alert they name.
    fn chaos_errors(region: &RegionFile, experiments: Vec<Value>) -> Vec<String> {
        let rule = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "quilla", "namespace": "quilla"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "QuillaOutboxBacklogGrowing", "expr": "vector(1)"}]}]}});
        let objects: Vec<Rendered> = experiments.into_iter().chain([rule]).map(rendered).collect();
        check(region, &objects, &all())
    }

    #[test]
    fn chaos_experiments_run_in_dev_name_a_real_alert_and_follow_the_call_graph() {
        let dev = region("spain", "dev", "eu-south-2");
        let refused = |region: &RegionFile, expected: &str, change: &dyn Fn(&mut Value)| {
            let mut experiment = webhook_delay();
            change(&mut experiment);
            let errors = chaos_errors(region, vec![experiment]);
            assert!(errors.iter().any(|e| e.contains(expected)), "expected `{expected}` among {errors:#?}");
        };
        assert_eq!(chaos_errors(&dev, vec![webhook_delay()]), Vec::<String>::new());
        refused(&spain(), "a chaos experiment in prod", &|_| {});
        refused(&dev, "no quilla.io/expected-alert annotation", &|e| e["metadata"]["annotations"] = json!({}));
        refused(&dev, "`QuillaNoSuchAlert` is not an alert", &|e| {
            e["metadata"]["annotations"][EXPECTED_ALERT] = json!("QuillaNoSuchAlert");
        });
        // Either end of the allowed call may be the selector, in any direction (requests or replies).
        for direction in ["to", "from", "both"] {
            let mut reversed = webhook_delay();
            reversed["spec"]["direction"] = json!(direction);
            let spec = &mut reversed["spec"];
            spec["target"]["selector"]["labelSelectors"]["app.kubernetes.io/name"] = json!("transaction-api");
            spec["selector"]["labelSelectors"]["app.kubernetes.io/name"] = json!("notification-service");
            assert_eq!(chaos_errors(&dev, vec![reversed]), Vec::<String>::new(), "{direction}");
        }
        // Pods that never call each other, or a selector by another label, disturb no allowed call.
        refused(&dev, "is not along an allowed call", &|e| {
            e["spec"]["target"]["selector"]["labelSelectors"]["app.kubernetes.io/name"] = json!("transaction-api");
        });
        refused(&dev, "is not along an allowed call", &|e| {
            e["spec"]["target"]["selector"]["labelSelectors"] = json!({"app": "notification-service"});
        });
        // Outside the cluster, only the data tier.
        refused(&dev, "external target \"10.0.128.0/17\" is not the environment's data tier 10.0.16.0/20", &|e| {
            e["spec"]["externalTargets"] = json!(["10.0.128.0/17"]);
        });
        let unreachable = |e: &mut Value| e["spec"]["externalTargets"] = json!(["10.0.16.0/20"]);
        let mut database = webhook_delay();
        database["spec"].as_object_mut().map(|spec| spec.remove("target"));
        unreachable(&mut database);
        assert_eq!(chaos_errors(&dev, vec![database]), Vec::<String>::new());
        // A Schedule's experiment is held to the same.
        let schedule = |spec: Value| {
            json!({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "Schedule",
                "metadata": {"name": "weekly", "namespace": "quilla", "annotations": {EXPECTED_ALERT: "QuillaOutboxBacklogGrowing"}},
                "spec": {"schedule": "0 10 * * 2", "type": "NetworkChaos", "networkChaos": spec}})
        };
        assert_eq!(chaos_errors(&dev, vec![schedule(webhook_delay()["spec"].clone())]), Vec::<String>::new());
        let mut elsewhere = webhook_delay()["spec"].clone();
        elsewhere["target"]["selector"]["labelSelectors"]["app.kubernetes.io/name"] = json!("someone-else");
        let errors = chaos_errors(&dev, vec![schedule(elsewhere)]);
        assert!(errors.iter().any(|e| e.contains("Schedule quilla/weekly: NetworkChaos between")), "{errors:#?}");
    }
}
