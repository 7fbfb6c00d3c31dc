//! Resource ids: a type prefix plus a lowercase ULID (`txn_01j9...`), unique and sortable by the
//! millisecond they were made in.
//!
//! Every id gets 80 fresh random bits (`Ulid::new()`, from the thread-local CSPRNG), so no id can
//! be derived from another. ULID's monotonic generator is deliberately not used: it makes the ids
//! of one millisecond differ by 1, so a client seeing one id could guess its neighbours. The price
//! is that ids made in the same millisecond sort in random order.

use ulid::Ulid;

/// A new id with `prefix`: its time part is now, its random part independent of every other id.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Ulid::new().to_string().to_ascii_lowercase())
}

/// Whether `id` is `prefix` + `_` + a valid ULID in canonical lowercase form.
pub fn is_valid_id(prefix: &str, id: &str) -> bool {
    let Some(rest) = id.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    // A ULID is 128 bits: 26 base32 characters of which the first carries only 3 bits.
    rest.len() == 26
        && rest.as_bytes()[0] <= b'7'
        && rest.bytes().all(|b| !b.is_ascii_uppercase())
        && Ulid::from_string(rest).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ulid(id: &str) -> Ulid {
        Ulid::from_string(id.split_once('_').expect("prefixed").1).expect("ULID")
    }

    #[test]
    fn ids_are_prefixed_valid_and_ordered_by_millisecond() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("txn")).collect();
        assert!(ids.iter().all(|id| is_valid_id("txn", id)), "{ids:?}");
        let times: Vec<u64> = ids.iter().map(|id| ulid(id).timestamp_ms()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "the time part never goes back");
    }

    #[test]
    fn ids_made_together_have_unrelated_random_parts() {
        // A thousand ids in a tight loop: most share a millisecond with others.
        let mut random: Vec<u128> = (0..1000).map(|_| ulid(&new_id("txn")).random()).collect();
        random.sort_unstable();
        let closest = random.windows(2).map(|w| w[1] - w[0]).min().expect("pairs");
        // For 1000 uniform 80-bit values, a gap under 2^40 has a probability of about 2^-20.
        assert!(closest >= 1 << 40, "two random parts differ by only {closest}");
    }

    #[test]
    fn wrong_prefix_or_shape_is_invalid() {
        let id = new_id("txn");
        assert!(!is_valid_id("notif", &id));
        assert!(!is_valid_id("txn", "txn_"));
        assert!(!is_valid_id("txn", &id.to_ascii_uppercase().replace("TXN", "txn")));
        assert!(!is_valid_id("txn", "txn_zzzzzzzzzzzzzzzzzzzzzzzzzz"), "overflows 128 bits");
        assert!(!is_valid_id("txn", "txn_0000000000000000000000000u"), "u is not Crockford base32");
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_pass_unless_well_formed(s in "\\PC{0,40}") {
            if is_valid_id("txn", &s) {
                prop_assert!(s.starts_with("txn_") && s.len() == 30);
            }
        }

        #[test]
        fn any_ulid_formats_to_a_valid_id(bits in any::<u128>()) {
            let id = format!("txn_{}", Ulid(bits).to_string().to_ascii_lowercase());
            prop_assert!(is_valid_id("txn", &id));
        }
    }
}
