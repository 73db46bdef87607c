//! How a table's rows are described once (their columns, in schema order, primary key first), so
//! that one piece of code encodes them for their authenticator, binds them to SQL and decodes
//! them. Every row type of an authenticated table implements [`Row`]; nothing else builds its
//! SQL by hand.

use kms_core::integrity::{key_text, RowEncoding, Value};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row as _};

/// The authenticated tables.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Table {
    /// `seal_config`.
    SealConfig,
    /// `root_generations`.
    RootGenerations,
    /// `root_shares`.
    RootShares,
    /// `admins`.
    Admins,
    /// `keys`.
    Keys,
    /// `key_versions`.
    KeyVersions,
    /// `release_policies`.
    ReleasePolicies,
    /// `hardware`.
    Hardware,
    /// `tpm_enrollments`.
    TpmEnrollments,
    /// `proposals`.
    Proposals,
    /// `approvals`.
    Approvals,
    /// `rejections`.
    Rejections,
    /// `token_keys`.
    TokenKeys,
    /// `checkpoint_keys`.
    CheckpointKeys,
    /// `admin_requests`.
    AdminRequests,
    /// `replicas` (authenticated, not tracked by the state log).
    Replicas,
    /// `tpm_clocks` (authenticated, not tracked by the state log).
    TpmClocks,
}

impl Table {
    /// Every authenticated table.
    pub const ALL: [Table; 17] = [
        Table::SealConfig,
        Table::RootGenerations,
        Table::RootShares,
        Table::Admins,
        Table::Keys,
        Table::KeyVersions,
        Table::ReleasePolicies,
        Table::Hardware,
        Table::TpmEnrollments,
        Table::Proposals,
        Table::Approvals,
        Table::Rejections,
        Table::TokenKeys,
        Table::CheckpointKeys,
        Table::AdminRequests,
        Table::Replicas,
        Table::TpmClocks,
    ];

    /// The SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SealConfig => "seal_config",
            Self::RootGenerations => "root_generations",
            Self::RootShares => "root_shares",
            Self::Admins => "admins",
            Self::Keys => "keys",
            Self::KeyVersions => "key_versions",
            Self::ReleasePolicies => "release_policies",
            Self::Hardware => "hardware",
            Self::TpmEnrollments => "tpm_enrollments",
            Self::Proposals => "proposals",
            Self::Approvals => "approvals",
            Self::Rejections => "rejections",
            Self::TokenKeys => "token_keys",
            Self::CheckpointKeys => "checkpoint_keys",
            Self::Replicas => "replicas",
            Self::TpmClocks => "tpm_clocks",
            Self::AdminRequests => "admin_requests",
        }
    }

    /// The table named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the state log records this table's writes, so that an older genuine row put back
    /// is detected. `replicas` (a heartbeat rewritten every second) and `tpm_clocks` (rewritten
    /// at every TPM attestation) are authenticated only: putting back an older genuine row of
    /// theirs gains nothing (docs/threat-model.md).
    pub fn tracked(self) -> bool {
        !matches!(self, Self::Replicas | Self::TpmClocks)
    }
}

/// A column's SQL kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// BIGINT / INTEGER (booleans as 0 and 1).
    Int,
    /// TEXT.
    Text,
    /// BYTEA / BLOB.
    Bytes,
}

/// A column of a table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
}

pub(crate) const fn int(name: &'static str) -> Column {
    Column { name, kind: Kind::Int }
}
pub(crate) const fn text(name: &'static str) -> Column {
    Column { name, kind: Kind::Text }
}
pub(crate) const fn bytes(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Bytes,
    }
}

/// A typed row of an authenticated table.
pub(crate) trait Row: Sized + Send + Sync {
    /// Its table.
    const TABLE: Table;
    /// Every column but the three authentication columns (`row_version`, `row_generation`,
    /// `row_mac`), in a fixed order, the primary key's columns first.
    const COLUMNS: &'static [Column];
    /// How many of [`Row::COLUMNS`] form the primary key.
    const KEY: usize;
    /// The values of [`Row::COLUMNS`], in order.
    fn to_values(&self) -> Vec<Value>;
    /// The row from values read in the order of [`Row::COLUMNS`]; `Err` names the column that
    /// does not hold a value of its type.
    fn from_values(v: &Values<'_>) -> Result<Self, String>;

    /// The primary key as canonical text (what the state log records).
    fn key(&self) -> String {
        key_of(&self.to_values()[..Self::KEY])
    }
}

/// The condition of a read that selects every row (it only orders them), for
/// [`Store::fetch`](super::Store::fetch) and its kin.
pub(crate) fn every<S>(_: &S) -> bool {
    true
}

/// The canonical text of a primary key's values.
pub(crate) fn key_of(values: &[Value]) -> String {
    key_text(values.iter().map(|v| match v {
        Value::Int(Some(i)) => i.to_string(),
        Value::Text(Some(s)) => s.clone(),
        Value::Bytes(Some(b)) => hex::encode(b),
        _ => String::new(),
    }))
}

/// The encoding a row's authenticator covers.
pub(crate) fn encoding(table: &str, columns: &[Column], values: &[Value], version: i64) -> RowEncoding {
    RowEncoding::new(table, version, columns.iter().zip(values).map(|(c, v)| (c.name, v)))
}

/// Values read from a row, looked up by column name.
pub(crate) struct Values<'a> {
    pub(crate) columns: &'static [Column],
    pub(crate) values: &'a [Value],
}

impl Values<'_> {
    fn get(&self, name: &str) -> Result<&Value, String> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| format!("no column {name}"))
    }

    pub(crate) fn opt_int(&self, name: &str) -> Result<Option<i64>, String> {
        match self.get(name)? {
            Value::Int(i) => Ok(*i),
            _ => Err(format!("{name} is not an integer column")),
        }
    }

    pub(crate) fn int(&self, name: &str) -> Result<i64, String> {
        self.opt_int(name)?.ok_or_else(|| format!("{name} is NULL"))
    }

    pub(crate) fn u32(&self, name: &str) -> Result<u32, String> {
        u32::try_from(self.int(name)?).map_err(|_| format!("{name} is out of range"))
    }

    pub(crate) fn u64(&self, name: &str) -> Result<u64, String> {
        u64::try_from(self.int(name)?).map_err(|_| format!("{name} is out of range"))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<bool, String> {
        match self.int(name)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("{name} is not 0 or 1")),
        }
    }

    pub(crate) fn opt_text(&self, name: &str) -> Result<Option<String>, String> {
        match self.get(name)? {
            Value::Text(t) => Ok(t.clone()),
            _ => Err(format!("{name} is not a text column")),
        }
    }

    pub(crate) fn text(&self, name: &str) -> Result<String, String> {
        self.opt_text(name)?.ok_or_else(|| format!("{name} is NULL"))
    }

    pub(crate) fn opt_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match self.get(name)? {
            Value::Bytes(b) => Ok(b.clone()),
            _ => Err(format!("{name} is not a binary column")),
        }
    }

    pub(crate) fn bytes(&self, name: &str) -> Result<Vec<u8>, String> {
        self.opt_bytes(name)?.ok_or_else(|| format!("{name} is NULL"))
    }
}

/// Reads `columns` of `r` as raw values (no interpretation: what the authenticator covers).
pub(crate) fn read_values(r: &AnyRow, columns: &[Column]) -> Result<Vec<Value>, sqlx::Error> {
    read_values_as(r, columns, "")
}

/// The same, for a row of a select of several tables, whose columns are named `<prefix><name>`
/// (see [`select_list_as`]).
pub(crate) fn read_values_as(r: &AnyRow, columns: &[Column], prefix: &str) -> Result<Vec<Value>, sqlx::Error> {
    columns
        .iter()
        .map(|c| {
            let name = prefixed(prefix, c.name);
            Ok(match c.kind {
                Kind::Int => Value::Int(r.try_get(name.as_ref())?),
                Kind::Text => Value::Text(r.try_get(name.as_ref())?),
                Kind::Bytes => Value::Bytes(r.try_get(name.as_ref())?),
            })
        })
        .collect()
}

/// `name` as a select of several tables calls it (`<prefix><name>`).
pub(crate) fn prefixed<'a>(prefix: &str, name: &'a str) -> std::borrow::Cow<'a, str> {
    if prefix.is_empty() {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("{prefix}{name}"))
    }
}

/// Whether the row of `T` in a select of several tables (columns named `<prefix><name>`, the
/// table outer-joined) is there: its first key column is not NULL, which a stored row's never is.
pub(crate) fn present_as<T: Row>(r: &AnyRow, prefix: &str) -> Result<bool, sqlx::Error> {
    let c = &T::COLUMNS[0];
    let name = prefixed(prefix, c.name);
    Ok(match c.kind {
        Kind::Int => r.try_get::<Option<i64>, _>(name.as_ref())?.is_some(),
        Kind::Text => r.try_get::<Option<String>, _>(name.as_ref())?.is_some(),
        Kind::Bytes => r.try_get::<Option<Vec<u8>>, _>(name.as_ref())?.is_some(),
    })
}

/// Binds `v` as the next parameter.
pub(crate) fn bind<'q>(q: Query<'q, Any, AnyArguments<'q>>, v: &Value) -> Query<'q, Any, AnyArguments<'q>> {
    match v {
        Value::Int(i) => q.bind(*i),
        Value::Text(t) => q.bind(t.clone()),
        Value::Bytes(b) => q.bind(b.clone()),
    }
}

/// `c1, c2, …, row_version, row_generation, row_mac` of `T`'s table.
pub(crate) fn select_list<T: Row>() -> String {
    let mut s: Vec<&str> = T::COLUMNS.iter().map(|c| c.name).collect();
    s.extend(["row_version", "row_generation", "row_mac"]);
    s.join(", ")
}

/// The columns of `T`'s table joined as `alias`, each renamed `<alias>_<name>`:
/// `alias.c1 AS alias_c1, …` with the three authentication columns (read with
/// [`read_values_as`] and the prefix `alias_`).
pub(crate) fn select_list_as<T: Row>(alias: &str) -> String {
    T::COLUMNS
        .iter()
        .map(|c| c.name)
        .chain(["row_version", "row_generation", "row_mac"])
        .map(|n| format!("{alias}.{n} AS {alias}_{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `alias.k1 = $first AND …`: `T`'s primary key, for a join's `ON`.
pub(crate) fn key_on<T: Row>(alias: &str, first: usize) -> String {
    T::COLUMNS[..T::KEY]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{alias}.{} = ${}", c.name, first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `SELECT <every column> FROM <table> <rest>`.
pub(crate) fn select<T: Row>(rest: &str) -> String {
    format!("SELECT {} FROM {} {rest}", select_list::<T>(), T::TABLE.name())
}

/// `INSERT INTO <table> (<every column>) VALUES ($1, …)`.
pub(crate) fn insert_sql<T: Row>() -> String {
    let n = T::COLUMNS.len() + 3;
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        T::TABLE.name(),
        select_list::<T>(),
        params.join(", ")
    )
}

/// The parameters of a multi-row `VALUES`: `($1,…,$cols),($cols+1,…),…` for `rows` rows.
pub(crate) fn values_params(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", params.join(","))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `UPDATE <table> SET <every non-key column and the authentication> WHERE <key> AND
/// row_version = <old>`: parameters are the non-key values, the three authentication values, the
/// key values and the old version, in that order.
pub(crate) fn update_sql<T: Row>() -> String {
    let mut i = 0;
    let mut next = || {
        i += 1;
        format!("${i}")
    };
    let mut sets: Vec<String> = T::COLUMNS[T::KEY..]
        .iter()
        .map(|c| format!("{} = {}", c.name, next()))
        .collect();
    for c in ["row_version", "row_generation", "row_mac"] {
        sets.push(format!("{c} = {}", next()));
    }
    let mut wheres: Vec<String> = T::COLUMNS[..T::KEY]
        .iter()
        .map(|c| format!("{} = {}", c.name, next()))
        .collect();
    wheres.push(format!("row_version = {}", next()));
    format!(
        "UPDATE {} SET {} WHERE {}",
        T::TABLE.name(),
        sets.join(", "),
        wheres.join(" AND ")
    )
}

/// `DELETE FROM <table> WHERE <key> AND row_version = <old>`.
pub(crate) fn delete_sql<T: Row>() -> String {
    let mut wheres: Vec<String> = T::COLUMNS[..T::KEY]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}", c.name, i + 1))
        .collect();
    wheres.push(format!("row_version = ${}", T::KEY + 1));
    format!("DELETE FROM {} WHERE {}", T::TABLE.name(), wheres.join(" AND "))
}

/// `WHERE <key>` with parameters from `$first`.
pub(crate) fn key_where<T: Row>(first: usize) -> String {
    let wheres: Vec<String> = T::COLUMNS[..T::KEY]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}", c.name, first + i))
        .collect();
    format!("WHERE {}", wheres.join(" AND "))
}
