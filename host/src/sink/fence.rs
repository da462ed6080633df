//! Zombie fencing at the catalog's compare-and-swap.
//!
//! A member of the consumer group that lost a partition (paused past its session, cut off from the
//! broker) may still hold rows of it and try to commit them after the new owner took over; those
//! rows would then be in `campaign_events` twice. The new owner's claim raises the partition's
//! epoch in every table (see [`super::summary`]); a commit must land only if no entry with a
//! higher epoch (for a claim: an equal or higher one) for a partition it covers sits in the
//! table's history.
//!
//! Checking before `Transaction::commit` is not enough: iceberg-rust reloads the table inside
//! the commit and re-applies the append on whatever is current, so a claim landing between a
//! check and the commit would be passed over. This wrapper does the check inside the commit:
//! iceberg-rust loads the table through it (the base the append is built on, whose current
//! snapshot the commit's requirements pin) and then calls `update_table`, where the base's
//! history is checked. The catalog's compare-and-swap guarantees the commit lands only on that
//! base, so nothing can slip in between the check and the swap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

use super::summary;

/// The partitions (→ epoch) the next commit to one table covers.
#[derive(Debug, Clone)]
pub struct Fence {
    pub table: TableIdent,
    pub topic: String,
    pub epochs: BTreeMap<i32, u64>,
    /// A claim: an entry with an equal epoch also wins over it.
    pub claim: bool,
    /// Summary entries only this commit carries (writer id and commit sequence, or claim id):
    /// when iceberg-rust retries the commit, a base that already holds them means an earlier
    /// attempt landed.
    pub mark: Vec<(String, String)>,
}

/// Message prefix of the error a fenced commit fails with (see [`FencingCatalog::fenced`]).
pub const FENCED: &str = "admetrics: fenced";
/// Message prefix of the error a retried commit stops with when an earlier attempt landed.
pub const ALREADY_COMMITTED: &str = "admetrics: already committed";

#[derive(Debug, Default)]
struct State {
    /// The last table loaded per identifier: the base of the commit that follows.
    loaded: HashMap<TableIdent, Table>,
    /// Per table: the newest snapshot already scanned and the highest epoch per partition in
    /// its history, so each check reads only the snapshots added since.
    scanned: HashMap<TableIdent, (i64, BTreeMap<i32, u64>)>,
    fence: Option<Fence>,
    /// `update_table` calls since the fence was armed (more than one: iceberg-rust retried).
    attempts: u32,
    fenced: Vec<i32>,
    /// Commits the catalog refused because the table had moved on (another writer's commit).
    conflicts: u64,
}

#[derive(Debug)]
pub struct FencingCatalog {
    inner: Arc<dyn Catalog>,
    state: Mutex<State>,
}

impl FencingCatalog {
    pub fn new(inner: Arc<dyn Catalog>) -> Self {
        FencingCatalog {
            inner,
            state: Mutex::default(),
        }
    }

    /// Arms the fence for the next `update_table` of `fence.table`.
    pub fn arm(&self, fence: Fence) {
        let mut s = self.state.lock().unwrap();
        s.fence = Some(fence);
        s.attempts = 0;
        s.fenced.clear();
    }

    pub fn disarm(&self) {
        self.state.lock().unwrap().fence = None;
    }

    /// Catalog commits lost to another writer's so far (iceberg-rust retries them).
    pub fn conflicts(&self) -> u64 {
        self.state.lock().unwrap().conflicts
    }

    /// The partitions the last refused commit lost (empty if it was not refused by the fence).
    pub fn fenced(&self) -> Vec<i32> {
        self.state.lock().unwrap().fenced.clone()
    }

    /// Fault injection (`lose-race`): waits until another writer committed `table` since its
    /// last load through this catalog (the base of the commit about to be made), for up to two
    /// minutes.
    async fn await_other_commit(&self, table: &TableIdent) {
        let base = {
            let s = self.state.lock().unwrap();
            s.loaded
                .get(table)
                .and_then(|t| t.metadata_location().map(str::to_string))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            match self.inner.load_table(table).await {
                Ok(t) if t.metadata_location().map(str::to_string) != base => {
                    eprintln!(
                        "admetrics: fault injection: {table} committed by another writer meanwhile; this commit loses the race"
                    );
                    return;
                }
                _ if std::time::Instant::now() >= deadline => {
                    eprintln!("admetrics: fault injection: no other commit of {table} came");
                    return;
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// Highest epoch per partition of `topic` in `base`'s history, reading only snapshots not
    /// scanned before.
    fn max_epochs(s: &mut State, base: &Table, topic: &str) -> BTreeMap<i32, u64> {
        let ident = base.identifier().clone();
        let (seen_head, mut max) = s
            .scanned
            .remove(&ident)
            .unwrap_or((i64::MIN, BTreeMap::new()));
        let mut head = None;
        for (id, props) in summary::ancestry(base) {
            head.get_or_insert(id);
            if id == seen_head {
                break;
            }
            for (p, (_, e)) in summary::entries(props, topic) {
                let m = max.entry(p).or_insert(e);
                *m = (*m).max(e);
            }
        }
        s.scanned
            .insert(ident, (head.unwrap_or(seen_head), max.clone()));
        max
    }
}

#[async_trait]
impl Catalog for FencingCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        let t = self.inner.load_table(table).await?;
        self.state
            .lock()
            .unwrap()
            .loaded
            .insert(table.clone(), t.clone());
        Ok(t)
    }
    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        {
            let mut s = self.state.lock().unwrap();
            let armed = s
                .fence
                .as_ref()
                .filter(|f| &f.table == commit.identifier())
                .cloned();
            if let Some(f) = armed {
                let Some(base) = s.loaded.get(&f.table).cloned() else {
                    return Err(Error::new(
                        ErrorKind::Unexpected,
                        "fence armed but the commit's base table was not loaded through it",
                    ));
                };
                s.attempts += 1;
                // A retry inside iceberg-rust: the previous attempt's outcome was unknown to
                // it, and re-applying the append on a base that holds it would reference the
                // same data files twice (the duplicate-file check is off, see `append`).
                if s.attempts > 1
                    && !f.mark.is_empty()
                    && summary::ancestry(&base)
                        .any(|(_, props)| f.mark.iter().all(|(k, v)| props.get(k) == Some(v)))
                {
                    return Err(Error::new(
                        ErrorKind::DataInvalid,
                        format!("{ALREADY_COMMITTED}: {} holds this commit", f.table),
                    ));
                }
                let max = Self::max_epochs(&mut s, &base, &f.topic);
                let lost: Vec<i32> = f
                    .epochs
                    .iter()
                    .filter(|(p, mine)| {
                        max.get(p)
                            .is_some_and(|&e| e > **mine || (f.claim && e == **mine))
                    })
                    .map(|(p, _)| *p)
                    .collect();
                if !lost.is_empty() {
                    s.fenced = lost.clone();
                    return Err(Error::new(
                        ErrorKind::DataInvalid,
                        format!(
                            "{FENCED}: partitions {lost:?} of {} were claimed by another member with a higher epoch",
                            f.table
                        ),
                    ));
                }
            }
        }
        if crate::fault::lose_race() {
            self.await_other_commit(commit.identifier()).await;
        }
        let r = self.inner.update_table(commit).await;
        let r = match (r, crate::fault::ambiguous_commit()) {
            (Ok(_), Some(crate::fault::Ambiguous::Conflict)) => Err(Error::new(
                ErrorKind::CatalogCommitConflicts,
                "fault injection: applied, reported as a conflict",
            )
            .with_retryable(true)),
            (Ok(_), Some(crate::fault::Ambiguous::Unknown)) => Err(Error::new(
                ErrorKind::Unexpected,
                "fault injection: applied, reported as: the commit state is unknown",
            )),
            (r, _) => r,
        };
        if r.as_ref().is_err_and(|e| e.retryable()) {
            self.state.lock().unwrap().conflicts += 1;
        }
        r
    }
}
