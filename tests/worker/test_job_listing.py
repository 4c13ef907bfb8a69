"""ListBatchJobs (issue 14): each identity lists its own jobs only (an operator lists all), newest
first, page after page with no duplicates or gaps; an expired job drops out of the list and out
of the index; a malformed page token is INVALID_ARGUMENT. Against the real front with token
auth, a real redis-server and an in-process worker; and `dermserve batch list`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest

from dermserve.batch import defaults
from dermserve.batch.jobs import JobInput, JobService, SubmitRequest
from dermserve.core.identity import ANONYMOUS, Caller
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.worker.settings import WorkerSettings
from tests.service.conftest import reason_of
from tests.worker.conftest import FakeBackend, run_worker_burst, wait_until, write_images
from tests.worker.test_hardening import Client, Front, files, front  # noqa: F401 (fixture)
from tests.worker.test_servicer import stub, target  # noqa: F401 (fixtures)


def listed(client: Client, **request: object) -> list[pb.BatchJob]:
    """Every job `client` lists, page after page (asserting no page is over its size)."""
    jobs: list[pb.BatchJob] = []
    token = ""
    while True:
        page: pb.ListBatchJobsResponse = client.call(
            "ListBatchJobs", pb.ListBatchJobsRequest(page_token=token, **request))  # type: ignore[arg-type]
        assert len(page.jobs) <= (request.get("page_size") or 50)  # type: ignore[operator]
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            return jobs


def submit_jobs(jobs: JobService, count: int, caller: Caller = ANONYMOUS) -> list[str]:
    return [jobs.submit(SubmitRequest(JobInput(paths=["one"])), caller).job.job_id
            for _ in range(count)]


def test_each_identity_lists_only_its_own_jobs_newest_first(
        front: Front, settings: WorkerSettings, input_root: Path) -> None:  # noqa: F811
    write_images(input_root / "a", 2)
    submitted: dict[str, list[str]] = {"alice": [], "bob": []}
    for who in ["alice", "bob", "alice", "alice", "bob"]:
        client: Client = getattr(front, who)
        name = f"{who}-{len(submitted[who])}"
        submitted[who].append(client.submit(files("a", client_job_id=name)).job.job_id)
    alices, bobs = listed(front.alice), listed(front.bob)
    assert [job.job_id for job in alices] == submitted["alice"][::-1]
    assert [job.job_id for job in bobs] == submitted["bob"][::-1]
    assert [job.client_job_id for job in alices] == ["alice-2", "alice-1", "alice-0"]
    times = [job.create_time.ToNanoseconds() for job in alices]
    assert times == sorted(times, reverse=True)
    everyone = {job.job_id for job in listed(front.ops)}  # an operator lists every identity's
    assert everyone == set(submitted["alice"] + submitted["bob"])

    front.alice.call("CancelBatchJob", pb.CancelBatchJobRequest(job_id=submitted["alice"][1]))
    cancelled = listed(front.alice, state=pb.BATCH_JOB_STATE_CANCELLED)
    assert [job.job_id for job in cancelled] == [submitted["alice"][1]]
    assert listed(front.bob, state=pb.BATCH_JOB_STATE_CANCELLED) == []
    run_worker_burst(settings, FakeBackend())
    done = listed(front.bob, state=pb.BATCH_JOB_STATE_SUCCEEDED)
    assert [job.job_id for job in done] == submitted["bob"][::-1]
    assert all(job.results_jsonl_path and job.done_images == 2 for job in done)


def test_paging_crosses_pages_without_duplicates_or_gaps(
        jobs: JobService, input_root: Path) -> None:
    write_images(input_root / "one", 1)
    ids = submit_jobs(jobs, 7)[::-1]
    first = jobs.list_jobs(ANONYMOUS, page_size=3)
    assert [job.job_id for job in first.jobs] == ids[:3] and first.next_page_token
    newer = submit_jobs(jobs, 1)  # a job submitted between pages shifts nothing
    seen, token = [job.job_id for job in first.jobs], first.next_page_token
    while token:
        page = jobs.list_jobs(ANONYMOUS, page_size=3, page_token=token)
        assert 0 < len(page.jobs) <= 3
        seen += [job.job_id for job in page.jobs]
        token = page.next_page_token
    assert seen == ids
    assert [job.job_id for job in jobs.list_jobs(ANONYMOUS).jobs] == newer + ids
    assert jobs.list_jobs(Caller("token:someone-else")).jobs == []


def test_jobs_created_in_the_same_instant_page_without_duplicates_or_gaps(
        jobs: JobService, input_root: Path) -> None:
    """Index entries with equal scores (one clock tick): the cursor resumes inside the tie."""
    write_images(input_root / "one", 1)
    ids = submit_jobs(jobs, 5)
    store = jobs.store
    store.client.zadd(store.owner_jobs_key(ANONYMOUS.identity), dict.fromkeys(ids, 1e9))
    seen, token = [], ""
    while True:
        page = jobs.list_jobs(ANONYMOUS, page_size=2, page_token=token)
        seen += [job.job_id for job in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids, reverse=True)


def test_an_expired_job_drops_out_of_the_list_and_its_index(
        jobs: JobService, input_root: Path) -> None:
    write_images(input_root / "one", 1)
    kept, expiring = submit_jobs(jobs, 2)
    store = jobs.store
    for key in store._job_keys(expiring):  # as its TTL would, a week after it finished
        store.client.pexpire(key, 1)
    wait_until(lambda: not store.exists(expiring), "the job's keys to expire")
    operator = Caller("token:ops", operator=True)
    for caller, key in ((ANONYMOUS, store.owner_jobs_key(ANONYMOUS.identity)),
                        (operator, store.all_jobs_key)):  # the owner's index, then everyone's
        assert store.client.zscore(key, expiring) is not None
        assert [job.job_id for job in jobs.list_jobs(caller).jobs] == [kept]
        assert store.client.zscore(key, expiring) is None  # dropped as the listing read it
        assert store.client.zscore(key, kept) is not None


def test_one_call_reads_a_bounded_part_of_the_index(jobs: JobService, input_root: Path) -> None:
    """A long run of expired entries before the caller's next job: a short (here empty) page
    with a token, not a walk over the whole index in one call."""
    write_images(input_root / "one", 1)
    [real] = submit_jobs(jobs, 1)
    budget = defaults.JOBS_READ_BATCH * defaults.MAX_JOBS_READS
    expired = {f"{i:032x}": 2e9 + i for i in range(budget)}  # newer than `real`, keys gone
    jobs.store.client.zadd(jobs.store.owner_jobs_key(ANONYMOUS.identity), expired)
    first = jobs.list_jobs(ANONYMOUS, page_size=5)
    assert first.jobs == [] and first.next_page_token
    second = jobs.list_jobs(ANONYMOUS, page_size=5, page_token=first.next_page_token)
    assert [job.job_id for job in second.jobs] == [real] and not second.next_page_token
    assert jobs.store.client.zcard(jobs.store.owner_jobs_key(ANONYMOUS.identity)) == 1


def test_the_indexes_expire_after_the_longest_a_job_lives(
        jobs: JobService, settings: WorkerSettings, input_root: Path) -> None:
    write_images(input_root / "one", 1)
    submit_jobs(jobs, 1)
    store = jobs.store
    longest = settings.active_job_ttl_s + settings.job_ttl_s
    for key in (store.owner_jobs_key(ANONYMOUS.identity), store.all_jobs_key):
        assert 0 < store.client.ttl(key) <= longest  # type: ignore[operator]
    stale = "f" * 32  # an entry older than any job can live is trimmed by the next create
    store.client.zadd(store.all_jobs_key, {stale: 1.0})
    submit_jobs(jobs, 1)
    assert store.client.zscore(store.all_jobs_key, stale) is None


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("token", [
    "garbage", "é", b64("1700000000.5"), b64("nan/" + "0" * 32), b64("inf/" + "0" * 32),
    b64("1700000000.5/../../etc"), b64("1700000000.5/" + "0" * 31), "=" * 8])
def test_a_malformed_page_token_is_invalid_argument(stub: pb_grpc.BatchJobsStub,  # noqa: F811
                                                    token: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListBatchJobs(pb.ListBatchJobsRequest(page_token=token), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "BAD_PAGE_TOKEN"


def test_a_negative_page_size_is_invalid_argument(
        stub: pb_grpc.BatchJobsStub) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListBatchJobs(pb.ListBatchJobsRequest(page_size=-1), timeout=10)
    assert (caught.value.code(), reason_of(caught.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "BAD_PAGE_SIZE")


def printed_ids(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [json.loads(line)["job_id"] for line in capsys.readouterr().out.splitlines()]


def test_cli_batch_list(target: str, jobs: JobService, input_root: Path,  # noqa: F811
                        capsys: pytest.CaptureFixture[str]) -> None:
    from dermserve.cli.batch import main

    write_images(input_root / "one", 1)
    ids = submit_jobs(jobs, 3)[::-1]
    assert main(["list", "--target", target]) == 0
    assert printed_ids(capsys) == ids
    assert main(["list", "--limit", "2", "--target", target]) == 0
    assert printed_ids(capsys) == ids[:2]
    jobs.cancel(ids[1])
    assert main(["list", "--state", "cancelled", "--target", target]) == 0
    assert printed_ids(capsys) == [ids[1]]
    assert main(["list", "--state", "QUEUED", "--limit", "0", "--target", target]) == 0
    assert printed_ids(capsys) == [ids[0], ids[2]]
    assert main(["list", "--state", "RUNNING", "--target", target]) == 0
    assert printed_ids(capsys) == []
