//! Cluster-wide task claims (`P-tasks/{name}`, under the holder's lease) and job records
//! (`P-jobs/{kind}/{id}`), beside the cluster prefix rather than under it.

use super::{unavailable, Etcd};
use crate::ManifestResult;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

impl Etcd {
    /// Claims the cluster-wide task `name` (a snapshot schedule, an export job) for `holder`
    /// under its lease, if nobody holds it. Returns the claim's creation revision, or `None`
    /// if someone else holds it. A holder that dies loses the claim with its lease.
    pub async fn claim_task(
        &self,
        name: &str,
        holder: &str,
        lease: i64,
    ) -> ManifestResult<Option<i64>> {
        self.claim_key(self.task_key(name), holder, lease, "claim task")
            .await
    }

    /// Whether the claim on task `name` created at `create_revision` still exists.
    pub async fn task_held(&self, name: &str, create_revision: i64) -> ManifestResult<bool> {
        let r = self
            .client
            .clone()
            .get(self.task_key(name), None)
            .await
            .map_err(|e| unavailable("read task claim", e))?;
        Ok(r.kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == create_revision))
    }

    /// Gives up the claim on task `name` created at `create_revision` (if still ours).
    pub async fn release_task(&self, name: &str, create_revision: i64) -> ManifestResult<bool> {
        self.release_key(self.task_key(name), create_revision, "release task")
            .await
    }

    // Task claims and job records live beside the cluster prefix (`{prefix}-tasks/`,
    // `{prefix}-jobs/`), like transaction records: a job's progress updates must not wake
    // every node's watch on the cluster, nor grow its view.
    fn task_key(&self, name: &str) -> String {
        format!("{}-tasks/{name}", self.prefix)
    }

    fn job_key(&self, kind: &str, id: &str) -> String {
        format!("{}-jobs/{kind}/{id}", self.prefix)
    }

    /// Job records (small JSON documents; etcd is not for bulk data).
    /// Creates the record; fails if the id exists.
    pub async fn job_create(&self, kind: &str, id: &str, body: Vec<u8>) -> ManifestResult<()> {
        self.create_record(self.job_key(kind, id), body, "create job record")
            .await
    }

    /// Replaces a job record only while it exists and the claim on `task` created at
    /// `claim_revision` still holds: a worker that lost its claim cannot overwrite the record
    /// of the worker that took the job over.
    pub async fn job_update_fenced(
        &self,
        kind: &str,
        id: &str,
        body: Vec<u8>,
        task: &str,
        claim_revision: i64,
    ) -> ManifestResult<bool> {
        let key = self.job_key(kind, id);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Greater, 0),
                Compare::create_revision(self.task_key(task), CompareOp::Equal, claim_revision),
            ])
            .and_then([TxnOp::put(key, body, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("update job record", e))?;
        Ok(resp.succeeded())
    }

    /// A job record's body, if it exists.
    pub async fn job_get(&self, kind: &str, id: &str) -> ManifestResult<Option<Vec<u8>>> {
        let r = self
            .client
            .clone()
            .get(self.job_key(kind, id), None)
            .await
            .map_err(|e| unavailable("read job record", e))?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every job record of `kind`: (id, body).
    pub async fn job_list(&self, kind: &str) -> ManifestResult<Vec<(String, Vec<u8>)>> {
        self.list_under(format!("{}-jobs/{kind}/", self.prefix), "list job records")
            .await
    }

    /// Deletes a job record.
    pub async fn job_delete(&self, kind: &str, id: &str) -> ManifestResult<()> {
        self.client
            .clone()
            .delete(self.job_key(kind, id), None)
            .await
            .map_err(|e| unavailable("delete job record", e))?;
        Ok(())
    }
}
