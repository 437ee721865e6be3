"""The original research service's task storage, as it used Redis (redis-py asyncio).

Kept byte-for-byte faithful to what that service did so the compatibility tests exercise the
real thing: key `research_task:<id>`, value `json.dumps(task)`, `SETEX` with a 7-day TTL,
`GET` + `json.loads`, `DEL`.

Usage: original_service.py URL save JSON | load ID | delete ID
`load` prints `json.dumps(task)` of what it read. When `load` or `delete` finds no task, it
prints `ABSENT` and exits 3: an outcome of its own, so that a crash (a Python traceback exits
1) can never pass for "absent".
"""

import asyncio
import json
import sys

import redis.asyncio as redis

TASK_TTL_SECONDS = 7 * 24 * 60 * 60
ABSENT_EXIT_CODE = 3


class RedisTaskStorage:
    def __init__(self, url):
        self.redis = redis.from_url(url)

    def _key(self, task_id):
        return f"research_task:{task_id}"

    async def save(self, task):
        await self.redis.setex(self._key(task["id"]), TASK_TTL_SECONDS, json.dumps(task))

    async def load(self, task_id):
        raw = await self.redis.get(self._key(task_id))
        return None if raw is None else json.loads(raw)

    async def delete(self, task_id):
        return await self.redis.delete(self._key(task_id)) > 0

    async def close(self):
        await self.redis.aclose()


def absent():
    print("ABSENT")
    return ABSENT_EXIT_CODE


async def main(url, command, argument):
    storage = RedisTaskStorage(url)
    try:
        if command == "save":
            await storage.save(json.loads(argument))
            return 0
        if command == "load":
            task = await storage.load(argument)
            if task is None:
                return absent()
            print(json.dumps(task))
            return 0
        if command == "delete":
            return 0 if await storage.delete(argument) else absent()
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    finally:
        await storage.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
