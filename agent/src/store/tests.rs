use super::*;

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

#[test]
fn voter_policy() {
    assert_eq!(desired_voters(&set(&[1]), &set(&[])), set(&[1]));
    assert_eq!(desired_voters(&set(&[1, 2]), &set(&[1])), set(&[1]));
    assert_eq!(
        desired_voters(&set(&[1, 2, 3]), &set(&[1])),
        set(&[1, 2, 3])
    );
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4]), &set(&[1, 2, 3])),
        set(&[1, 2, 3])
    );
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4, 5, 6]), &set(&[1, 2, 3])),
        set(&[1, 2, 3, 4, 5])
    );
    // A voter leaves: a learner is promoted, the other voters stay.
    assert_eq!(
        desired_voters(&set(&[1, 3, 4, 5]), &set(&[1, 2, 3])),
        set(&[1, 3, 4])
    );
    // Existing voters are kept even when lower ids are learners.
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4, 5]), &set(&[3, 4, 5])),
        set(&[1, 2, 3, 4, 5])
    );
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4]), &set(&[2, 3, 4])),
        set(&[2, 3, 4])
    );
}

#[test]
fn etcd_urls() {
    let c = EtcdConfig::parse_url("etcd://10.0.0.1:2379,10.0.0.2:2379/").unwrap();
    assert_eq!(c.endpoints, vec!["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(c.prefix, "/smr/");
    assert_eq!(
        EtcdConfig::parse_url("etcd://h:1").unwrap().endpoints,
        vec!["h:1"]
    );
    assert!(EtcdConfig::parse_url("http://h:1").is_err());
    assert!(EtcdConfig::parse_url("etcd://").is_err());
    assert!(EtcdConfig::parse_url("h:1").is_err());
}
