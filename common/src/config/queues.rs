//! `xdp.queues`: `"all"` or an explicit list of queue ids.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which of the device's queues get a dataplane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QueueSelection {
    /// Every queue the device reports.
    #[default]
    All,
    /// These queue ids, in this order, without duplicates.
    List(Vec<u32>),
}

impl QueueSelection {
    /// Resolves the selection against a device with `available` queues.
    pub fn resolve(&self, available: u32) -> Result<Vec<u32>, String> {
        match self {
            QueueSelection::All => Ok((0..available).collect()),
            QueueSelection::List(ids) => {
                if let Some(bad) = ids.iter().find(|&&q| q >= available) {
                    return Err(format!(
                        "queue {bad} does not exist: the device has {available} queue(s), ids 0..={}",
                        available.saturating_sub(1)
                    ));
                }
                Ok(ids.clone())
            }
        }
    }
}

impl<'de> Deserialize<'de> for QueueSelection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QueueSelection;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"all\" or a list of queue ids such as [0, 1]")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                if s == "all" {
                    Ok(QueueSelection::All)
                } else {
                    Err(E::custom(format!(
                        "{s:?} is not a queue selection: write \"all\" or a list such as [0, 1]"
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<u32>()? {
                    ids.push(id);
                }
                Ok(QueueSelection::List(ids))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for QueueSelection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            QueueSelection::All => s.serialize_str("all"),
            QueueSelection::List(ids) => ids.serialize(s),
        }
    }
}
