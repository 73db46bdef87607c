//! Small values kept in the token as private data objects (`CKO_DATA`, token, private): what a
//! process must remember across restarts where the database (which the operator controls) is
//! not trusted to remember it, such as the last audit checkpoint `kmsd` signed (its anchor
//! against a database rolled back to an earlier state). Not secret, but only a user logged into
//! the token can read or change it.

use cryptoki::object::{Attribute, AttributeType, ObjectClass};

use crate::{Hsm, HsmError};

impl Hsm {
    /// The value of the data object labelled `label`, if there is one.
    pub fn read_data(&self, label: &str) -> Result<Option<Vec<u8>>, HsmError> {
        let t = &self.token;
        t.with_session(|s| {
            let found = t.find(s, label, &[Attribute::Class(ObjectClass::DATA)])?;
            let Some(o) = found.first() else { return Ok(None) };
            match t.attribute(s, *o, AttributeType::Value)? {
                Some(Attribute::Value(v)) => Ok(Some(v)),
                _ => Ok(None),
            }
        })
    }

    /// Sets the data object labelled `label` to `value`, creating it (private, on the token)
    /// if there is none.
    pub fn write_data(&self, label: &str, value: &[u8]) -> Result<(), HsmError> {
        let t = &self.token;
        t.with_object_store(|s| {
            let found = t.find(s, label, &[Attribute::Class(ObjectClass::DATA)])?;
            match found.first() {
                Some(o) => s
                    .update_attributes(*o, &[Attribute::Value(value.to_vec())])
                    .map_err(|e| t.err(format!("updating data object '{label}'"), &e)),
                None => {
                    t.ensure_free(s, label)?;
                    s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Modifiable(true),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Application(b"kmsd".to_vec()),
                        Attribute::Value(value.to_vec()),
                    ])
                    .map(|_| ())
                    .map_err(|e| t.err(format!("creating data object '{label}'"), &e))
                }
            }
        })
    }
}
