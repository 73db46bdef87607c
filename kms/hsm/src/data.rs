//! Small values kept in the token as private data objects (`CKO_DATA`, token, private): what a
//! process must remember across restarts where the database (which the operator controls) is
//! not trusted to remember it, such as the last audit checkpoint `kmsd` signed (its anchor
//! against a database rolled back to an earlier state). Not secret, but only a user logged into
//! the token can read or change it.
//!
//! Tokens need not let `CKA_VALUE` of a data object change (SoftHSM2 2.6.1 answers
//! `CKR_ATTRIBUTE_READ_ONLY`), so a write creates a new object and then destroys the older ones
//! under the label: a crash between the two leaves both, and readers get every value.

use cryptoki::object::{Attribute, AttributeType, ObjectClass};

use crate::{Hsm, HsmError};

impl Hsm {
    /// The values of the data objects labelled `label` (none, one, or more after an interrupted
    /// write: the caller picks the newest by their content).
    pub fn read_data(&self, label: &str) -> Result<Vec<Vec<u8>>, HsmError> {
        let t = &self.token;
        t.with_session(|s| {
            let mut out = Vec::new();
            for o in t.find(s, label, &[Attribute::Class(ObjectClass::DATA)])? {
                if let Some(Attribute::Value(v)) = t.attribute(s, o, AttributeType::Value)? {
                    out.push(v);
                }
            }
            Ok(out)
        })
    }

    /// Makes `value` the value under `label`: a new private data object on the token, then the
    /// older ones under the label destroyed.
    pub fn write_data(&self, label: &str, value: &[u8]) -> Result<(), HsmError> {
        let t = &self.token;
        t.with_object_store(|s| {
            let older = t.find(s, label, &[Attribute::Class(ObjectClass::DATA)])?;
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Application(b"kmsd".to_vec()),
                Attribute::Value(value.to_vec()),
            ])
            .map_err(|e| t.err(format!("creating data object '{label}'"), &e))?;
            for o in older {
                s.destroy_object(o)
                    .map_err(|e| t.err(format!("destroying an older data object '{label}'"), &e))?;
            }
            Ok(())
        })
    }
}
