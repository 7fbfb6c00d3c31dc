//! One environment's rendered objects as a cluster would see them: which pods a Service or a
//! NetworkPolicy selects, which ports those pods declare, and which Services each service's
//! configuration calls (every URL in its config files that names a Service).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{describe, matches_labels};
use crate::validate::Rendered;

/// The rendered objects of one environment.
pub struct Cluster<'a> {
    objects: &'a [Rendered],
}

/// A call one pod's configuration makes to a Service.
#[derive(Debug)]
struct Call {
    caller: String,
    url: url::Url,
    service: String,
}

impl<'a> Cluster<'a> {
    pub fn new(objects: &'a [Rendered]) -> Self {
        Self { objects }
    }

    fn of_kind(&self, kind: &'a str) -> impl Iterator<Item = &'a Rendered> + 'a {
        self.objects.iter().filter(move |r| r.object["kind"] == kind)
    }

    pub fn deployments(&self) -> impl Iterator<Item = &'a Rendered> + 'a {
        self.of_kind("Deployment")
    }

    pub fn jobs(&self) -> impl Iterator<Item = &'a Rendered> + 'a {
        self.of_kind("Job")
    }

    /// The object of `kind` named `name`.
    pub fn find(&self, kind: &'a str, name: &str) -> Option<&'a Rendered> {
        self.of_kind(kind).find(|r| r.object["metadata"]["name"] == name)
    }

    /// The ExternalSecret whose target is the Secret `name`.
    pub fn external_secret_for(&self, name: &str) -> Option<&'a Rendered> {
        self.of_kind("ExternalSecret").find(|r| {
            let target = &r.object["spec"]["target"]["name"];
            target == name || (target.is_null() && r.object["metadata"]["name"] == name)
        })
    }

    /// The cert-manager Certificate that writes the Secret `name`.
    pub fn certificate_for(&self, name: &str) -> Option<&'a Rendered> {
        self.of_kind("Certificate").find(|r| r.object["spec"]["secretName"] == name)
    }

    /// Services in the pod's namespace (for the kubelet's service-link variables).
    pub fn services(&self) -> impl Iterator<Item = &'a Rendered> + 'a {
        self.of_kind("Service")
    }

    /// Deployments whose pod template carries every label of `selector`.
    fn selected(&self, selector: &Value) -> Vec<&'a Rendered> {
        self.deployments()
            .filter(|d| matches_labels(selector, &d.object["spec"]["template"]["metadata"]["labels"]))
            .collect()
    }

    /// Problems with routing: Service ports that reach no declared port, and calls the
    /// NetworkPolicies or the callee's certificate would refuse.
    pub fn check_routing(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for service in self.services() {
            let selector = &service.object["spec"]["selector"];
            let pods = self.selected(selector);
            if pods.is_empty() {
                problems.push(format!("{} selects no Deployment's pods", describe(service)));
            }
            for port in service.object["spec"]["ports"].as_array().into_iter().flatten() {
                for pod in &pods {
                    if container_port(pod, &port["targetPort"]).is_none() {
                        problems.push(format!(
                            "{}: port {} targets {}, which {} does not declare",
                            describe(service),
                            port["name"].as_str().unwrap_or("?"),
                            port["targetPort"],
                            describe(pod)
                        ));
                    }
                }
            }
        }
        for policy in self.of_kind("NetworkPolicy") {
            problems.extend(self.check_policy_ports(policy));
        }
        for call in self.calls() {
            problems.extend(self.check_call(&call));
        }
        problems
    }

    /// Every port a policy names must be one its pods (ingress) or the destination pods (egress)
    /// declare; a named port no pod declares matches nothing.
    fn check_policy_ports(&self, policy: &Rendered) -> Vec<String> {
        let mut problems = Vec::new();
        let own = self.selected(&policy.object["spec"]["podSelector"]["matchLabels"]);
        for rule in policy.object["spec"]["ingress"].as_array().into_iter().flatten() {
            for port in rule["ports"].as_array().into_iter().flatten() {
                for pod in &own {
                    if container_port(pod, &port["port"]).is_none() {
                        problems.push(format!(
                            "{}: ingress port {} is not a port of {}",
                            describe(policy),
                            port["port"],
                            describe(pod)
                        ));
                    }
                }
            }
        }
        for rule in policy.object["spec"]["egress"].as_array().into_iter().flatten() {
            for peer in rule["to"].as_array().into_iter().flatten() {
                if !peer["namespaceSelector"].is_null() || peer["podSelector"].is_null() {
                    continue; // pods of other namespaces (add-ons) or addresses: not rendered here
                }
                for pod in self.selected(&peer["podSelector"]["matchLabels"]) {
                    for port in rule["ports"].as_array().into_iter().flatten() {
                        if container_port(pod, &port["port"]).is_none() {
                            problems.push(format!(
                                "{}: egress port {} to {} is not a port it declares",
                                describe(policy),
                                port["port"],
                                describe(pod)
                            ));
                        }
                    }
                }
            }
        }
        problems
    }

    /// Every URL in a Deployment's mounted config files whose host is a Service of this namespace.
    fn calls(&self) -> Vec<Call> {
        let mut calls = Vec::new();
        for deployment in self.deployments() {
            let caller = deployment.object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            for volume in deployment.object["spec"]["template"]["spec"]["volumes"].as_array().into_iter().flatten() {
                let Some(name) = volume["configMap"]["name"].as_str() else { continue };
                let Some(config_map) = self.find("ConfigMap", name) else { continue };
                for text in config_map.object["data"].as_object().into_iter().flat_map(|d| d.values()) {
                    let Some(text) = text.as_str() else { continue };
                    let Ok(table) = text.parse::<toml::Table>() else { continue };
                    for url in urls(&toml::Value::Table(table)) {
                        if let Some(service) = self.service_named_by(&url) {
                            calls.push(Call { caller: caller.clone(), url, service });
                        }
                    }
                }
            }
        }
        calls
    }

    /// The Service a URL's host names (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`).
    fn service_named_by(&self, url: &url::Url) -> Option<String> {
        let host = url.host_str()?;
        self.services().find_map(|service| {
            let name = service.object["metadata"]["name"].as_str()?;
            let namespace = service.object["metadata"]["namespace"].as_str().unwrap_or("default");
            let names = [
                name.to_owned(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ];
            names.contains(&host.to_owned()).then(|| name.to_owned())
        })
    }

    /// A call must reach a Service port, whose pods' port both policies allow between caller and
    /// callee, over a certificate name the callee's Certificate covers when it is HTTPS.
    fn check_call(&self, call: &Call) -> Vec<String> {
        let what = format!("{} calls {}", call.caller, call.url);
        let Some(service) = self.find("Service", &call.service) else { return vec![] };
        let port = call.url.port_or_known_default().unwrap_or_default();
        let Some(service_port) = service.object["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        else {
            return vec![format!("{what}: Service {} has no port {port}", call.service)];
        };
        let (Some(caller), callees) =
            (self.find("Deployment", &call.caller), self.selected(&service.object["spec"]["selector"]))
        else {
            return vec![];
        };
        let mut problems = Vec::new();
        for callee in callees {
            let Some(pod_port) = container_port(callee, &service_port["targetPort"]) else { continue };
            if !self.egress_allows(caller, callee, pod_port) {
                problems.push(format!(
                    "{what}: no NetworkPolicy lets {} reach {} on port {pod_port}",
                    describe(caller),
                    describe(callee)
                ));
            }
            if !self.ingress_allows(caller, callee, pod_port) {
                problems.push(format!(
                    "{what}: no NetworkPolicy lets {} accept {} on port {pod_port}",
                    describe(callee),
                    describe(caller)
                ));
            }
            if call.url.scheme() == "https" {
                let host = call.url.host_str().unwrap_or_default();
                if !self.certificate_names(callee).contains(host) {
                    problems.push(format!("{what}: {}'s Certificate does not cover the name {host}", describe(callee)));
                }
            }
        }
        problems
    }

    /// Policies that select `pod`.
    fn policies_of(&self, pod: &Rendered) -> Vec<&'a Rendered> {
        let labels = &pod.object["spec"]["template"]["metadata"]["labels"];
        self.of_kind("NetworkPolicy")
            .filter(|p| matches_labels(&p.object["spec"]["podSelector"]["matchLabels"], labels))
            .collect()
    }

    fn egress_allows(&self, from: &Rendered, to: &Rendered, port: u16) -> bool {
        self.allows(from, "egress", "to", to, to, port)
    }

    fn ingress_allows(&self, from: &Rendered, to: &Rendered, port: u16) -> bool {
        self.allows(to, "ingress", "from", from, to, port)
    }

    /// Whether a policy selecting `owner` has a `direction` rule whose `peers` include `peer` and
    /// whose ports include `port` of `callee` (the policy sees the callee pod's port either way).
    fn allows(
        &self,
        owner: &Rendered,
        direction: &str,
        peers: &str,
        peer: &Rendered,
        callee: &Rendered,
        port: u16,
    ) -> bool {
        self.policies_of(owner).iter().any(|policy| {
            (policy.object["spec"][direction].as_array().into_iter().flatten())
                .any(|rule| peers_include(&rule[peers], peer) && ports_include(&rule["ports"], callee, port))
        })
    }

    /// The DNS names of the Certificates whose Secrets `pod` mounts.
    fn certificate_names(&self, pod: &Rendered) -> BTreeSet<String> {
        let volumes = pod.object["spec"]["template"]["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        volumes
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .filter_map(|secret| self.certificate_for(secret))
            .flat_map(|c| c.object["spec"]["dnsNames"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    }
}

/// The first container's port that `port` (a number or a port name) designates.
pub fn container_port(deployment: &Rendered, port: &Value) -> Option<u16> {
    let container = &deployment.object["spec"]["template"]["spec"]["containers"][0];
    container["ports"].as_array()?.iter().find_map(|declared| {
        let number = declared["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok())?;
        let by_name = port.as_str().is_some_and(|name| declared["name"] == name);
        let by_number = port.as_u64() == Some(u64::from(number));
        (by_name || by_number).then_some(number)
    })
}

/// Whether a rule's peers (`to`/`from`) include `pod`: same-namespace pod selectors only. A rule
/// without peers admits everyone.
fn peers_include(peers: &Value, pod: &Rendered) -> bool {
    let Some(peers) = peers.as_array() else { return true };
    let labels = &pod.object["spec"]["template"]["metadata"]["labels"];
    peers.iter().any(|peer| {
        peer["namespaceSelector"].is_null()
            && peer["ipBlock"].is_null()
            && matches_labels(&peer["podSelector"]["matchLabels"], labels)
    })
}

/// Whether a rule's ports include `port` of `pod` (by number or by the pod's port name). A rule
/// without ports admits every port.
fn ports_include(ports: &Value, pod: &Rendered, port: u16) -> bool {
    let Some(ports) = ports.as_array() else { return true };
    ports.iter().any(|p| container_port(pod, &p["port"]) == Some(port) || p["port"].as_u64() == Some(u64::from(port)))
}

/// Every string in a TOML value that parses as an absolute URL with a host.
fn urls(value: &toml::Value) -> Vec<url::Url> {
    match value {
        toml::Value::String(text) => {
            url::Url::parse(text).ok().filter(|u| u.host_str().is_some()).into_iter().collect()
        }
        toml::Value::Array(items) => items.iter().flat_map(urls).collect(),
        toml::Value::Table(table) => table.values().flat_map(urls).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rendered(object: Value) -> Rendered {
        Rendered { source: "fixture".into(), object }
    }

    fn deployment(name: &str, config_map: Option<&str>) -> Value {
        let volumes = match config_map {
            Some(config_map) => json!([{"name": "config", "configMap": {"name": config_map}},
                {"name": "tls", "secret": {"secretName": format!("{name}-tls")}}]),
            None => json!([{"name": "tls", "secret": {"secretName": format!("{name}-tls")}}]),
        };
        json!({"kind": "Deployment", "metadata": {"name": name, "namespace": "quilla"},
            "spec": {"template": {"metadata": {"labels": {"app": name}}, "spec": {"volumes": volumes,
                "containers": [{"name": name, "ports": [{"name": "http", "containerPort": 8080},
                    {"name": "admin", "containerPort": 9090}]}]}}}})
    }

    /// caller → callee over https://callee.quilla.svc:8080, allowed both ways.
    fn cluster() -> Vec<Value> {
        vec![
            deployment("caller", Some("caller-config")),
            deployment("callee", None),
            json!({"kind": "ConfigMap", "metadata": {"name": "caller-config"},
                "data": {"config.toml": "[webhook]\nurl = \"https://callee.quilla.svc:8080/hook\"\n"}}),
            json!({"kind": "Service", "metadata": {"name": "callee", "namespace": "quilla"},
                "spec": {"selector": {"app": "callee"}, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}),
            json!({"kind": "Service", "metadata": {"name": "caller", "namespace": "quilla"},
                "spec": {"selector": {"app": "caller"}, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}),
            json!({"kind": "NetworkPolicy", "metadata": {"name": "caller"}, "spec": {"podSelector": {"matchLabels": {"app": "caller"}},
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "callee"}}}], "ports": [{"port": 8080}]}]}}),
            json!({"kind": "NetworkPolicy", "metadata": {"name": "callee"}, "spec": {"podSelector": {"matchLabels": {"app": "callee"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "caller"}}}], "ports": [{"port": "http"}]}]}}),
            json!({"kind": "Certificate", "metadata": {"name": "callee"},
                "spec": {"secretName": "callee-tls", "dnsNames": ["callee", "callee.quilla.svc"]}}),
        ]
    }

    fn problems_after(change: impl FnOnce(&mut Vec<Value>)) -> Vec<String> {
        let mut objects = cluster();
        change(&mut objects);
        let objects: Vec<Rendered> = objects.into_iter().map(rendered).collect();
        Cluster::new(&objects).check_routing()
    }

    #[test]
    fn an_allowed_verified_call_passes() {
        assert_eq!(problems_after(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn a_call_the_policies_or_the_certificate_would_refuse_is_named() {
        let egress = problems_after(|o| o[5]["spec"]["egress"][0]["ports"][0]["port"] = json!(8081));
        assert!(
            egress
                .iter()
                .any(|p| p.contains("no NetworkPolicy lets Deployment caller reach Deployment callee on port 8080")),
            "{egress:?}"
        );
        let ingress = problems_after(|o| o[6]["spec"]["ingress"][0]["ports"][0]["port"] = json!("admin"));
        assert!(ingress.iter().any(|p| p.contains("no NetworkPolicy lets Deployment callee accept")), "{ingress:?}");
        let name = problems_after(|o| o[7]["spec"]["dnsNames"] = json!(["callee"]));
        assert!(name.iter().any(|p| p.contains("does not cover the name callee.quilla.svc")), "{name:?}");
        let port = problems_after(|o| {
            o[2]["data"]["config.toml"] = json!("[webhook]\nurl = \"https://callee.quilla.svc:9999/hook\"\n");
        });
        assert!(port.iter().any(|p| p.contains("Service callee has no port 9999")), "{port:?}");
    }

    #[test]
    fn ports_no_pod_declares_are_named() {
        let target = problems_after(|o| o[3]["spec"]["ports"][0]["targetPort"] = json!(8081));
        assert!(target.iter().any(|p| p.contains("Service callee: port http targets 8081")), "{target:?}");
        let ingress = problems_after(|o| o[6]["spec"]["ingress"][0]["ports"][0]["port"] = json!("metrics"));
        assert!(
            ingress.iter().any(|p| p.contains("ingress port \"metrics\" is not a port of Deployment callee")),
            "{ingress:?}"
        );
    }
}
