"""The BatchJobs servicer: protos in, JobService (batch/jobs.py) calls, protos out. Nothing else.

The front offers BatchJobs when it is given Redis (`--redis-url` / `DERMSERVE_REDIS_URL`, as
`make run` and deploy/ do); without Redis there are no batch jobs to serve, and the front serves
Classify alone. This side needs Redis and the output directory, never TensorFlow: the workers do
the classifying.

Errors are raised as core.errors types and mapped to status codes by the front's one
interceptor (service.status.ErrorMappingInterceptor), as for LesionClassifier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dermserve.batch.jobs import InlineImage, JobInput, JobService, SubmitRequest
from dermserve.batch.records import ALL_IMAGES_FAILED, JobRecord, JobState, Priority
from dermserve.protocol.results import result_message
from dermserve.service.auth import caller_of
from dermserve.v1 import batch_jobs_pb2 as pb
from dermserve.v1 import batch_jobs_pb2_grpc as pb_grpc
from dermserve.v1 import lesion_classifier_pb2 as lc

PRIORITY_FROM_PROTO = {
    pb.BATCH_JOB_PRIORITY_UNSPECIFIED: Priority.NORMAL,
    pb.BATCH_JOB_PRIORITY_LOW: Priority.LOW,
    pb.BATCH_JOB_PRIORITY_NORMAL: Priority.NORMAL,
    pb.BATCH_JOB_PRIORITY_HIGH: Priority.HIGH,
}
PRIORITY_TO_PROTO = {priority: pb.BatchJobPriority.Value(f"BATCH_JOB_PRIORITY_{priority.name}")
                     for priority in Priority}

STATE_FROM_PROTO = {pb.BatchJobState.Value(f"BATCH_JOB_STATE_{state.name}"): state
                    for state in JobState}
"""A ListBatchJobs state filter; BATCH_JOB_STATE_UNSPECIFIED (absent here) lists every state."""


def submit_request(request: pb.SubmitBatchJobRequest) -> SubmitRequest:
    source = request.WhichOneof("input")
    if source == "inline":
        job_input = JobInput(inline=[InlineImage(image.name, image.data)
                                     for image in request.inline.images])
    elif source == "files":
        job_input = JobInput(paths=list(request.files.paths))
    elif source == "manifest":
        job_input = JobInput(manifest_path=request.manifest.path,
                             manifest_csv=request.manifest.csv)
    else:
        job_input = JobInput()
    choice = request.model.WhichOneof("choice") if request.HasField("model") else None
    return SubmitRequest(
        input=job_input, client_job_id=request.client_job_id,
        model_version=request.model.version if choice == "version" else None,
        model_label=request.model.version_label if choice == "version_label" else "",
        priority=PRIORITY_FROM_PROTO.get(request.priority, Priority.NORMAL))


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_message(record: JobRecord, jsonl_path: str = "", csv_path: str = "",
                ndjson_path: str = "") -> pb.BatchJob:
    eta = record.eta_seconds()
    message = pb.BatchJob(
        job_id=record.job_id, client_job_id=record.client_job_id,
        state=pb.BatchJobState.Value(f"BATCH_JOB_STATE_{record.state.name}"),
        total_images=record.total, done_images=record.done, failed_images=record.failed,
        abstained_images=record.abstained, priority=PRIORITY_TO_PROTO[record.priority],
        eta_seconds=-1.0 if eta is None else eta, error=record.error,
        results_jsonl_path=jsonl_path, results_csv_path=csv_path,
        results_ndjson_path=ndjson_path)
    if record.resolved_version is not None:
        message.model.CopyFrom(lc.ModelVersionRef(name=record.model_name,
                                                  version=record.resolved_version))
    for field, seconds in (("create_time", record.created), ("start_time", record.started),
                           ("finish_time", record.finished)):
        stamp = _timestamp(seconds)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


class BatchJobsServicer(pb_grpc.BatchJobsServicer):
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    def _job(self, record: JobRecord) -> pb.BatchJob:
        # A job whose every image failed was exported too: its results hold each reason.
        if record.state.name != "SUCCEEDED" and not record.error.startswith(ALL_IMAGES_FAILED):
            return job_message(record)
        paths = self.jobs.export_paths(record.job_id)
        return job_message(record, str(paths["jsonl"]), str(paths["csv"]),
                           str(paths["ndjson"]))

    def SubmitBatchJob(self, request: pb.SubmitBatchJobRequest,
                       context: grpc.ServicerContext) -> pb.SubmitBatchJobResponse:
        outcome = self.jobs.submit(submit_request(request), caller_of(context))
        return pb.SubmitBatchJobResponse(job=self._job(outcome.job), created=outcome.created)

    def GetBatchJob(self, request: pb.GetBatchJobRequest,
                    context: grpc.ServicerContext) -> pb.GetBatchJobResponse:
        return pb.GetBatchJobResponse(job=self._job(self.jobs.get(request.job_id,
                                                                  caller_of(context))))

    def WatchBatchJob(self, request: pb.WatchBatchJobRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.WatchBatchJobResponse]:
        for record in self.jobs.watch(request.job_id, context.is_active, caller_of(context)):
            yield pb.WatchBatchJobResponse(job=self._job(record))

    def CancelBatchJob(self, request: pb.CancelBatchJobRequest,
                       context: grpc.ServicerContext) -> pb.CancelBatchJobResponse:
        record = self.jobs.cancel(request.job_id, caller_of(context))
        return pb.CancelBatchJobResponse(job=self._job(record))

    def ListBatchJobResults(self, request: pb.ListBatchJobResultsRequest,
                            context: grpc.ServicerContext) -> pb.ListBatchJobResultsResponse:
        page = self.jobs.list_results(request.job_id, request.page_size, request.page_token,
                                      caller_of(context))
        return pb.ListBatchJobResultsResponse(
            results=[result_message(result) for result in page.results],
            next_page_token=page.next_page_token, job=self._job(page.job))

    def ListBatchJobs(self, request: pb.ListBatchJobsRequest,
                      context: grpc.ServicerContext) -> pb.ListBatchJobsResponse:
        page = self.jobs.list_jobs(caller_of(context), request.page_size, request.page_token,
                                   STATE_FROM_PROTO.get(request.state))
        return pb.ListBatchJobsResponse(jobs=[self._job(record) for record in page.jobs],
                                        next_page_token=page.next_page_token)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BatchJobs"].full_name
"""dermserve.v1.BatchJobs, for health and reflection."""


def add_batch_jobs_service(server: grpc.Server, jobs: JobService) -> None:
    """Register BatchJobs on `server` (the front service calls this next to LesionClassifier)."""
    pb_grpc.add_BatchJobsServicer_to_server(BatchJobsServicer(jobs), server)


def batch_jobs_service(jobs: JobService) -> tuple[str, Callable[[grpc.Server], None]]:
    """(full name, adder), the form service.server.serve(extra_services=...) takes."""
    return SERVICE_NAME, lambda server: add_batch_jobs_service(server, jobs)
