//! The events services send each other by webhook, each defined once: serialised by the producer
//! and read by the consumer with the same types, so the two cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The data of one kind of event, and the `type` that names it on the wire.
pub trait EventData {
    /// The `type` of the envelope carrying this data, e.g. `transaction.created`.
    const TYPE: &'static str;
}

/// An event as sent: `{"id", "type", "created_at", "data"}`, signed as a whole (crate::webhook_signature).
///
/// `type` is kept as sent rather than checked while parsing, so a receiver refuses an event type
/// it does not handle by naming the field, not as malformed JSON ([`Event::has_type_of_its_data`]).
/// Unknown fields are tolerated: a producer may add fields without breaking its receivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<T> {
    /// The event id, also sent as the `webhook-id` header; receivers deduplicate on it.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub data: T,
}

impl<T: EventData> Event<T> {
    /// An event of `data`'s type.
    pub fn new(id: impl Into<String>, created_at: DateTime<Utc>, data: T) -> Self {
        Self { id: id.into(), event_type: T::TYPE.to_owned(), created_at, data }
    }

    /// Whether `type` names the kind of data this event was read as.
    pub fn has_type_of_its_data(&self) -> bool {
        self.event_type == T::TYPE
    }
}

impl<T: Serialize> Event<T> {
    /// The JSON body sent (and signed).
    pub fn to_json(&self) -> String {
        // Strings, a timestamp and plain structs: serialising them to JSON cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("an event serialises"))
    }
}

/// `transaction.created`: transaction-api stored a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionCreated {
    pub id: String,
    pub user_id: String,
    /// The exact decimal amount as text, with the currency's minor units (`"100.50"`), never a
    /// JSON number: receivers show it as sent, with no float in between.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

impl EventData for TransactionCreated {
    const TYPE: &'static str = "transaction.created";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("RFC 3339")
    }

    fn example() -> Event<TransactionCreated> {
        Event::new(
            "evt_01",
            at("2026-12-02T18:30:05.123456Z"),
            TransactionCreated {
                id: "txn_01".to_owned(),
                user_id: "u1".to_owned(),
                amount: "100.50".to_owned(),
                currency: "BRL".to_owned(),
                status: "completed".to_owned(),
                created_at: at("2026-12-02T18:30:05.120001Z"),
            },
        )
    }

    #[test]
    fn transaction_created_is_sent_in_the_published_wire_format() {
        // Receivers already deployed read exactly this: field names, order, amount as a string.
        assert_eq!(
            example().to_json(),
            r#"{"id":"evt_01","type":"transaction.created","created_at":"2026-12-02T18:30:05.123456Z","data":{"id":"txn_01","user_id":"u1","amount":"100.50","currency":"BRL","status":"completed","created_at":"2026-12-02T18:30:05.120001Z"}}"#
        );
    }

    #[test]
    fn what_is_sent_reads_back_as_the_same_event() {
        let sent = example();
        let read: Event<TransactionCreated> = serde_json::from_str(&sent.to_json()).expect("reads back");
        assert_eq!(read, sent);
        assert!(read.has_type_of_its_data());
    }

    #[test]
    fn unknown_fields_are_tolerated_and_an_unknown_type_is_kept_to_be_refused_by_name() {
        let body =
            example().to_json().replace(r#""type":"transaction.created""#, r#""type":"transaction.refunded","v":2"#);
        let read: Event<TransactionCreated> = serde_json::from_str(&body).expect("extra fields are fine");
        assert_eq!(read.event_type, "transaction.refunded");
        assert!(!read.has_type_of_its_data());
    }
}
