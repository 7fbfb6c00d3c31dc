//! Resource ids: a type prefix plus a lowercase ULID (`txn_01j9...`), unique and sortable by time.

use std::sync::{Mutex, PoisonError};

use ulid::{Generator, Ulid};

static GENERATOR: Mutex<Option<Generator>> = Mutex::new(None);

/// A new id with `prefix`; ids made by one process are strictly increasing.
pub fn new_id(prefix: &str) -> String {
    let ulid = {
        let mut guard = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
        let generator = guard.get_or_insert_with(Generator::new);
        // Overflow needs 2^80 ids in one millisecond; fall back to a fresh random ULID.
        generator.generate().unwrap_or_else(|_| Ulid::new())
    };
    format!("{prefix}_{}", ulid.to_string().to_ascii_lowercase())
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

    #[test]
    fn ids_are_prefixed_valid_and_increasing() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("txn")).collect();
        assert!(ids.iter().all(|id| is_valid_id("txn", id)), "{ids:?}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must sort in creation order");
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
