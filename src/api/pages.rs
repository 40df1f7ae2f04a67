//! Reading a listing page by page: the one pagination loop, for every [`DeploymentsApi`].
//!
//! `GET /deployments` answers newest first, at most 100 rows a call. Callers look for recent
//! deployments (a lost create, the state of in-flight ones), so the loop stops as soon as a page
//! reaches back before the oldest time of interest instead of reading the whole history.

use std::collections::HashSet;

use jiff::Timestamp;

use super::types::{DeploymentStatus, DeploymentSummary, ListQuery};
use super::{ApiError, ApiToken, DeploymentsApi};

/// Rows asked for per call: the API's maximum, so that a listing spends as little of the
/// token's rate budget as it can.
pub const PAGE_SIZE: u32 = 100;

/// Every deployment of the token's project, newest first, page by page (100 a call) until a
/// page reaches back before `oldest` or the list ends. The last page may hold older rows.
/// `Timestamp::MIN` reads the whole list.
pub async fn list_newest_back_to<A: DeploymentsApi + ?Sized>(
    api: &A,
    token: &ApiToken,
    oldest: Timestamp,
) -> Result<Vec<DeploymentSummary>, ApiError> {
    list_status_back_to(api, token, None, oldest).await
}

/// [`list_newest_back_to`] of the deployments in one `status` only (`None`: any status).
///
/// The list ends when a page comes back empty or `meta.total` rows have been counted. New
/// deployments made while it pages shift older rows onto the next page: a row seen twice is
/// returned once, where it was first seen. The first error ends the listing.
pub async fn list_status_back_to<A: DeploymentsApi + ?Sized>(
    api: &A,
    token: &ApiToken,
    status: Option<DeploymentStatus>,
    oldest: Timestamp,
) -> Result<Vec<DeploymentSummary>, ApiError> {
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    loop {
        let query = ListQuery {
            limit: Some(PAGE_SIZE),
            offset: Some(offset),
            status,
        };
        let page = api.list(token, &query).await?;
        offset = offset.saturating_add(u64::try_from(page.data.len()).unwrap_or(u64::MAX));
        let reached = page.data.last().is_some_and(|d| d.created_at < oldest);
        let exhausted = page.data.is_empty() || offset >= page.meta.total;
        rows.extend(page.data.into_iter().filter(|d| seen.insert(d.id.clone())));
        if reached || exhausted {
            return Ok(rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::api::{
        CancelledDeployment, CreateDeploymentRequest, CreatedDeployment, DeploymentDetails,
        DeploymentList, ListMeta, Room,
    };

    /// A project whose listing is `rows` (newest first); `arrivals[n]` new deployments appear
    /// at the top just before call `n` is answered. Records every query.
    #[derive(Default)]
    struct Listing {
        rows: Mutex<Vec<DeploymentSummary>>,
        arrivals: Vec<usize>,
        fail_at: Option<usize>,
        queries: Mutex<Vec<ListQuery>>,
    }

    fn row(id: &str, second: i64, status: DeploymentStatus) -> DeploymentSummary {
        DeploymentSummary {
            id: id.into(),
            status,
            branch: "main".into(),
            created_at: Timestamp::from_second(second).unwrap(),
        }
    }

    /// `n` queued deployments created one a second, the newest at second `n`.
    fn rows(n: i64) -> Vec<DeploymentSummary> {
        (1..=n)
            .rev()
            .map(|i| row(&format!("dep_{i}"), i, DeploymentStatus::Queued))
            .collect()
    }

    fn listing(rows: Vec<DeploymentSummary>) -> Listing {
        Listing {
            rows: Mutex::new(rows),
            ..Listing::default()
        }
    }

    fn unused<T>() -> Result<T, ApiError> {
        Err(ApiError::Config("not used by listings".into()))
    }

    impl DeploymentsApi for Listing {
        async fn create(
            &self,
            _: &ApiToken,
            _: &CreateDeploymentRequest,
        ) -> Result<CreatedDeployment, ApiError> {
            unused()
        }

        async fn list(&self, _: &ApiToken, q: &ListQuery) -> Result<DeploymentList, ApiError> {
            let call = {
                let mut queries = self.queries.lock().unwrap();
                queries.push(*q);
                queries.len() - 1
            };
            if self.fail_at == Some(call) {
                return Err(ApiError::Transport {
                    endpoint: crate::api::Endpoint::List,
                    message: "reset".into(),
                });
            }
            let mut rows = self.rows.lock().unwrap();
            for k in 0..self.arrivals.get(call).copied().unwrap_or(0) {
                let second = 10_000 + i64::try_from(call * 100 + k).unwrap();
                rows.insert(
                    0,
                    row(&format!("new_{call}_{k}"), second, DeploymentStatus::Queued),
                );
            }
            let matching: Vec<_> = rows
                .iter()
                .filter(|d| q.status.is_none_or(|s| s == d.status))
                .cloned()
                .collect();
            let offset = usize::try_from(q.offset.unwrap_or(0)).unwrap();
            let limit = usize::try_from(q.limit.unwrap_or(20)).unwrap();
            Ok(DeploymentList {
                data: matching.iter().skip(offset).take(limit).cloned().collect(),
                meta: ListMeta {
                    total: matching.len() as u64,
                    limit: q.limit.unwrap_or(20),
                    offset: q.offset.unwrap_or(0),
                },
            })
        }

        async fn get(&self, _: &ApiToken, _: &str) -> Result<DeploymentDetails, ApiError> {
            unused()
        }

        async fn get_if_idle(&self, _: &ApiToken, _: &str) -> Result<DeploymentDetails, ApiError> {
            unused()
        }

        fn room(&self, _: &ApiToken) -> Room {
            Room::Ample
        }

        async fn cancel(&self, _: &ApiToken, _: &str) -> Result<CancelledDeployment, ApiError> {
            unused()
        }

        async fn delete(&self, _: &ApiToken, _: &str) -> Result<(), ApiError> {
            unused()
        }

        async fn logs(&self, _: &ApiToken, _: &str) -> Result<String, ApiError> {
            unused()
        }
    }

    impl Listing {
        fn offsets(&self) -> Vec<u64> {
            let queries = self.queries.lock().unwrap();
            assert!(queries.iter().all(|q| q.limit == Some(PAGE_SIZE)));
            queries.iter().map(|q| q.offset.unwrap()).collect()
        }
    }

    fn token() -> ApiToken {
        ApiToken::new("sk_test_pages")
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[tokio::test]
    async fn the_listing_stops_at_the_page_that_reaches_back_before_oldest_and_keeps_its_older_rows()
     {
        let api = listing(rows(350));
        // dep_120 is on the third page (rows 201..300 hold dep_150 down to dep_51).
        let got = list_newest_back_to(&api, &token(), at(120)).await.unwrap();
        assert_eq!(api.offsets(), [0, 100, 200]);
        assert_eq!(got.len(), 300);
        assert_eq!(got[0].id, "dep_350", "newest first");
        assert_eq!(
            got.last().unwrap().id,
            "dep_51",
            "the last page is kept whole"
        );
    }

    #[tokio::test]
    async fn a_first_page_older_than_oldest_is_the_only_page_read() {
        let api = listing(rows(250));
        let got = list_newest_back_to(&api, &token(), at(1_000))
            .await
            .unwrap();
        assert_eq!(api.offsets(), [0]);
        assert_eq!(got.len(), 100);
    }

    #[tokio::test]
    async fn the_whole_list_is_read_when_nothing_is_old_enough() {
        let api = listing(rows(230));
        let got = list_newest_back_to(&api, &token(), Timestamp::MIN)
            .await
            .unwrap();
        assert_eq!(api.offsets(), [0, 100, 200]);
        assert_eq!(got.len(), 230);
    }

    #[tokio::test]
    async fn a_list_of_exactly_full_pages_ends_without_asking_for_an_empty_one() {
        let api = listing(rows(200));
        let got = list_newest_back_to(&api, &token(), Timestamp::MIN)
            .await
            .unwrap();
        assert_eq!(api.offsets(), [0, 100]);
        assert_eq!(got.len(), 200);
    }

    #[tokio::test]
    async fn an_empty_project_ends_after_one_empty_page() {
        let api = listing(Vec::new());
        let got = list_newest_back_to(&api, &token(), Timestamp::MIN)
            .await
            .unwrap();
        assert!(got.is_empty());
        assert_eq!(api.offsets(), [0]);
    }

    #[tokio::test]
    async fn the_first_error_ends_the_listing() {
        let api = Listing {
            fail_at: Some(1),
            ..listing(rows(250))
        };
        let err = list_newest_back_to(&api, &token(), Timestamp::MIN)
            .await
            .unwrap_err();
        assert_eq!(err.category(), "transport");
        assert_eq!(api.offsets(), [0, 100]);
    }

    #[tokio::test]
    async fn a_row_pushed_onto_the_next_page_by_a_new_deployment_is_returned_once() {
        let api = Listing {
            arrivals: vec![0, 3],
            ..listing(rows(150))
        };
        let got = list_newest_back_to(&api, &token(), Timestamp::MIN)
            .await
            .unwrap();
        let ids: HashSet<_> = got.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), got.len(), "no row twice");
        assert!(ids.contains("dep_1") && ids.contains("dep_150"));
        assert_eq!(got.len(), 150, "the new ones sit on the page already read");
    }

    #[tokio::test]
    async fn the_status_filter_is_sent_with_every_page() {
        let mut all = rows(150);
        for d in all.iter_mut().step_by(10) {
            d.status = DeploymentStatus::Cancelled;
        }
        let api = listing(all);
        let got = list_status_back_to(
            &api,
            &token(),
            Some(DeploymentStatus::Cancelled),
            Timestamp::MIN,
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 15);
        assert!(got.iter().all(|d| d.status == DeploymentStatus::Cancelled));
        let queries = api.queries.lock().unwrap();
        assert!(
            queries
                .iter()
                .all(|q| q.status == Some(DeploymentStatus::Cancelled))
        );
    }
}
