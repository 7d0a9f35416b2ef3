//! YAML documents read into values within a byte budget. serde_yaml_ng limits how often aliases
//! are followed, not how much they copy: an anchored list of 10,000 items named 10,000 times is a
//! 50 KB file that expands to 100 million values (10 GB and a minute here). Every value is
//! charged at about its JSON size as it is built, and reading stops once the budget is spent.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::value::{Tag, TaggedValue};
use serde_yaml_ng::{Mapping, Value};

use super::size::MAX_REQUEST_BODY_BYTES;

/// How many times its own length a text may grow when read: YAML without aliases stays within
/// about 5 (`{a,b,c}` is `{"a":null,"b":null,"c":null}`), block style within 2.
const EXPANSION_FACTOR: usize = 8;

/// The bytes the values read from one text may take: one object at the API server's limit, and
/// [`EXPANSION_FACTOR`] times the text.
pub(crate) struct Budget {
    limit: usize,
    left: Cell<usize>,
}

impl Budget {
    pub(crate) fn for_text(text: &str) -> Budget {
        let limit =
            MAX_REQUEST_BODY_BYTES.saturating_add(text.len().saturating_mul(EXPANSION_FACTOR));
        Budget {
            limit,
            left: Cell::new(limit),
        }
    }

    /// True once reading ran out of budget.
    pub(crate) fn spent(&self) -> bool {
        self.left.get() == 0
    }

    fn spend<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.left.set(0);
                Err(E::custom(format!(
                    "expands to more than {} bytes of values (YAML aliases copy what they name; \
                 at most {EXPANSION_FACTOR} times the text and {MAX_REQUEST_BODY_BYTES} bytes)",
                    self.limit
                )))
            }
        }
    }
}

/// Reads one value (a whole document) as [`Value`] does, charging it to the budget.
#[derive(Clone, Copy)]
pub(crate) struct BoundedValue<'a>(pub(crate) &'a Budget);

impl<'de> DeserializeSeed<'de> for BoundedValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// The digits of a number as JSON writes it.
fn digits(mut n: u64) -> usize {
    let mut count = 1;
    while n >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

impl<'de> Visitor<'de> for BoundedValue<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.spend(5)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.0.spend(digits(i.unsigned_abs()) + 1)?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.0.spend(digits(u))?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.0.spend(24)?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.spend(s.len() + 2)?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.spend(s.len() + 2)?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.spend(4)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.spend(2)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            self.0.spend(1)?;
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    /// A key given twice is an error, as `Value` and kubectl's YAML reader make it.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.spend(2)?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            self.0.spend(2)?;
            let value = map.next_value_seed(self)?;
            if mapping.contains_key(&key) {
                let key = match &key {
                    Value::String(s) => format!("{s:?}"),
                    other => format!("{other:?}"),
                };
                return Err(de::Error::custom(format!("duplicate entry with key {key}")));
            }
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    /// A tagged value (`!Tag value`), as `Value` reads it.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, contents): (String, _) = data.variant()?;
        if tag.is_empty() {
            return Err(de::Error::custom("empty YAML tag is not allowed"));
        }
        self.0.spend(tag.len())?;
        let value = de::VariantAccess::newtype_variant_seed(contents, self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}
