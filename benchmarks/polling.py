"""The polling alternative (MindsDB JOBS, a cron script): every second, select the rows written
since a watermark, batch-score them, upsert the predictions.

Written as a fair competitor — the same batch size, concurrency, endpoints and prediction tables
as cdc-scorer — with the weaknesses that belong to the approach left in, not fixed: it needs an
``updated_at`` column and an index on it, never sees deletes, and a transaction that commits
after the watermark moved past its ``updated_at`` is missed.

    python -m benchmarks.polling --port P --database D --endpoint-url URL
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import signal
from typing import Any

import pymysql
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from cdc_scorer.local.churn_data import FEATURE_COLUMNS
from cdc_scorer.stores.keys import key_hash

SELECT_CHURN = (
    f"SELECT {', '.join(FEATURE_COLUMNS)}, updated_at FROM churn "
    "WHERE updated_at > %s ORDER BY updated_at LIMIT %s"
)
UPSERT_CHURN = (
    "INSERT INTO churn_predictions (key_hash, phone, will_churn, churn_probability, "
    "model_endpoint, model_variant, source_committed_at, scored_at) "
    "VALUES (%s, %s, %s, %s, 'churn-autopilot-endpoint', %s, %s, NOW(6)) "
    "ON DUPLICATE KEY UPDATE will_churn=VALUES(will_churn), "
    "churn_probability=VALUES(churn_probability), model_variant=VALUES(model_variant), "
    "source_committed_at=VALUES(source_committed_at), scored_at=VALUES(scored_at)"
)
SELECT_FEEDBACK = (
    "SELECT id, user_feedback, updated_at FROM feedback WHERE updated_at > %s "
    "ORDER BY updated_at LIMIT %s"
)
UPSERT_FEEDBACK = (
    "INSERT INTO feedback_predictions (key_hash, id, sentiment, sentiment_positive, "
    "sentiment_negative, sentiment_neutral, sentiment_mixed, model_endpoint, "
    "source_committed_at, scored_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, 'comprehend:BatchDetectSentiment', %s, NOW(6)) "
    "ON DUPLICATE KEY UPDATE sentiment=VALUES(sentiment), "
    "sentiment_positive=VALUES(sentiment_positive), sentiment_negative=VALUES(sentiment_negative), "
    "sentiment_neutral=VALUES(sentiment_neutral), sentiment_mixed=VALUES(sentiment_mixed), "
    "source_committed_at=VALUES(source_committed_at), scored_at=VALUES(scored_at)"
)


class Poller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.conn = pymysql.connect(
            host="127.0.0.1",
            port=args.port,
            user="root",
            database=args.database,
            autocommit=True,
            charset="utf8mb4",
        )
        with self.conn.cursor() as cursor:  # start from now, as cdc-scorer's snapshot=never
            cursor.execute("SELECT NOW(6)")
            (now,) = cursor.fetchone() or ("",)
        self.churn_mark: Any = now
        self.feedback_mark: Any = now
        self.stopping = False

    async def run(self) -> None:
        config = AioConfig(
            retries={"total_max_attempts": 1}, max_pool_connections=self.args.concurrency
        )
        session = get_session()
        kwargs = {"region_name": "us-east-1", "endpoint_url": self.args.endpoint_url}
        async with (
            session.create_client("sagemaker-runtime", config=config, **kwargs) as sagemaker,
            session.create_client("comprehend", config=config, **kwargs) as comprehend,
        ):
            while not self.stopping:
                started = asyncio.get_running_loop().time()
                while await self._churn_round(sagemaker):
                    pass
                while await self._feedback_round(comprehend):
                    pass
                elapsed = asyncio.get_running_loop().time() - started
                await asyncio.sleep(max(0.0, self.args.interval - elapsed))

    async def _churn_round(self, client: Any) -> bool:
        """One page of changed churn rows; True if the page was full (more to read)."""
        limit = self.args.page
        with self.conn.cursor() as cursor:
            cursor.execute(SELECT_CHURN, (self.churn_mark, limit))
            rows = cursor.fetchall()
        if not rows:
            return False
        self.churn_mark = rows[-1][-1]
        batches = [rows[i : i + self.args.batch] for i in range(0, len(rows), self.args.batch)]
        semaphore = asyncio.Semaphore(self.args.concurrency)

        async def score(batch: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for row in batch:
                writer.writerow(["" if v is None else v for v in row[: len(FEATURE_COLUMNS)]])
            async with semaphore:
                response = await client.invoke_endpoint(
                    EndpointName="churn-autopilot-endpoint",
                    ContentType="text/csv",
                    Accept="text/csv",
                    Body=out.getvalue().encode(),
                )
                async with response["Body"] as stream:
                    text = (await stream.read()).decode()
            variant = response.get("InvokedProductionVariant")
            answers = list(csv.reader(io.StringIO(text)))
            upserts = []
            for row, answer in zip(batch, answers, strict=True):
                phone = row[3]
                label, probability = answer[0], float(answer[1])
                p_churn = probability if label == "True." else 1 - probability
                upserts.append((key_hash((phone,)), phone, label, p_churn, variant, row[-1]))
            return upserts

        results = await asyncio.gather(*(score(b) for b in batches))
        with self.conn.cursor() as cursor:
            self.conn.begin()
            cursor.executemany(UPSERT_CHURN, [u for r in results for u in r])
            self.conn.commit()
        return bool(len(rows) == limit)

    async def _feedback_round(self, client: Any) -> bool:
        limit = self.args.page
        with self.conn.cursor() as cursor:
            cursor.execute(SELECT_FEEDBACK, (self.feedback_mark, limit))
            rows = [r for r in cursor.fetchall()]
        if not rows:
            return False
        self.feedback_mark = rows[-1][-1]
        scorable = [r for r in rows if r[1] and r[1].strip()]
        upserts = []
        for i in range(0, len(scorable), 25):
            batch = scorable[i : i + 25]
            result = await client.batch_detect_sentiment(
                TextList=[r[1][:4000] for r in batch], LanguageCode="en"
            )
            for item in result["ResultList"]:
                row = batch[item["Index"]]
                s = item["SentimentScore"]
                upserts.append(
                    (
                        key_hash((row[0],)),
                        row[0],
                        item["Sentiment"],
                        s["Positive"],
                        s["Negative"],
                        s["Neutral"],
                        s["Mixed"],
                        row[2],
                    )
                )
        if upserts:
            with self.conn.cursor() as cursor:
                cursor.executemany(UPSERT_FEEDBACK, upserts)
        return bool(len(rows) == limit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    poller = Poller(parser.parse_args())

    def stop(*_: object) -> None:
        poller.stopping = True

    signal.signal(signal.SIGTERM, stop)
    asyncio.run(poller.run())


if __name__ == "__main__":
    main()
