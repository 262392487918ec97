//! `streamscore acls`: the Kafka ACLs that bind tenants to their producers' principals.
//!
//! Kafka does not tell a consumer who produced a record, so a tenant with `kafka_principals`
//! in the policy gets a topic of its own (`<requests topic>.<tenant>`) that only those
//! principals may write; ingest reads it beside the shared requests topic and refuses a record
//! that claims a bound tenant anywhere else. The broker enforces the write side: these are the
//! `kafka-acls.sh` commands that set it up.

use streamscore_infer::quota::Policy;
use streamscore_ingest::TenantTopics;

/// Quotes `text` for a POSIX shell.
fn quote(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/=@,+".contains(&b)) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The commands (with comment lines) that give each bound tenant's principals write access to
/// the tenant's topic, and nothing more. `command_config` is the client properties file
/// `kafka-acls.sh` authenticates with (`--command-config`).
pub fn commands(policy: &Policy, requests_topic: &str, bootstrap: &str, command_config: Option<&str>) -> Vec<String> {
    let admin = match command_config {
        Some(file) => format!("kafka-acls.sh --bootstrap-server {} --command-config {}", quote(bootstrap), quote(file)),
        None => format!("kafka-acls.sh --bootstrap-server {}", quote(bootstrap)),
    };
    let mut lines = Vec::new();
    for (tenant, principals) in policy.bound_tenants() {
        let topic = TenantTopics::topic_for(requests_topic, tenant);
        lines.push(format!("# tenant {tenant}: only {} may write {topic}", principals.join(", ")));
        for principal in principals {
            lines.push(format!(
                "{admin} --add --allow-principal {} --operation Write --operation Describe --topic {}",
                quote(principal),
                quote(&topic)
            ));
        }
    }
    if lines.is_empty() {
        lines.push(format!(
            "# no tenant in {} has kafka_principals: every tenant is taken on its record key and body",
            policy.path.display()
        ));
    } else {
        lines.push(format!(
            "# with an authorizer and allow.everyone.if.no.acl.found=false, no one else can write those topics; \
             the pipeline's own principal needs Read on them (and on {requests_topic}) for its consumer group"
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_principal_may_write_its_tenants_topic_only() {
        let text = "version = 1\n[tenants.acme]\nrate_per_sec = 5\nburst = 5\n\
                    kafka_principals = [\"User:acme-producer\", \"User:CN=it's,O=acme\"]\n\
                    [tenants.globex]\nrate_per_sec = 5\nburst = 5\n";
        let policy =
            Policy::parse(std::path::Path::new("tenants.toml"), text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let lines = commands(&policy, "inference.requests", "kafka:9092", Some("admin.properties"));
        let acls: Vec<&String> = lines.iter().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(acls.len(), 2, "{lines:#?}");
        assert_eq!(
            acls[0],
            "kafka-acls.sh --bootstrap-server kafka:9092 --command-config admin.properties --add \
             --allow-principal User:acme-producer --operation Write --operation Describe --topic inference.requests.acme"
        );
        assert!(acls[1].contains(r"--allow-principal 'User:CN=it'\''s,O=acme'"), "{}", acls[1]);
        assert!(lines.iter().all(|l| !l.contains("globex")), "an unbound tenant gets no topic");

        let open =
            Policy::parse(std::path::Path::new("t.toml"), b"version = 1\n[tenants.a]\nrate_per_sec = 1\nburst = 1\n")
                .unwrap_or_else(|e| panic!("{e}"));
        let lines = commands(&open, "inference.requests", "kafka:9092", None);
        assert!(lines.len() == 1 && lines[0].starts_with("# no tenant"), "{lines:?}");
    }
}
