"""Block manager and scheduler invariants, driven without a model (tokens are made up)."""

import random

import pytest

from reprise_gpu.engine.block_manager import BlockManager
from reprise_gpu.engine.sampling import SamplingParams
from reprise_gpu.engine.scheduler import QueueFull, Scheduler
from reprise_gpu.engine.sequence import Sequence, SequenceStatus


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, chunk=16, max_queue=100, max_model_len=256):
    bm = BlockManager(num_blocks, block_size)
    return bm, Scheduler(bm, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, prefill_chunk_size=chunk,
                         max_queue=max_queue, max_model_len=max_model_len)


def fake_step(sched: Scheduler, bm: BlockManager):
    """What the engine does after the model ran: advance num_cached, append a token, finish at max_tokens."""
    batch = sched.schedule()
    bm.check()
    assert batch.num_tokens <= sched.max_num_batched_tokens
    assert len(sched.running) <= sched.max_num_seqs
    finished = []
    for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new)):
        assert seq.status is SequenceStatus.RUNNING
        assert 1 <= n and seq.num_cached + n <= len(seq)
        assert len(seq.block_table) * bm.block_size >= seq.num_cached + n
        sampled = batch.samples(i)
        seq.num_cached += n
        if sampled:
            seq.append_token(7)
            if seq.num_completion_tokens >= seq.params.max_tokens:
                sched.finish(seq, "length")
                finished.append(seq)
    return batch, finished


def seq(n_prompt, max_tokens=4):
    return Sequence(list(range(1, n_prompt + 1)), SamplingParams(max_tokens=max_tokens, temperature=0))


class TestBlockManager:
    def test_allocate_append_free(self):
        bm = BlockManager(10, 4)
        s = seq(5)
        assert bm.ensure(s, 5) and len(s.block_table) == 2
        assert bm.ensure(s, 8) and len(s.block_table) == 2
        assert bm.ensure(s, 9) and len(s.block_table) == 3
        assert 0 not in s.block_table
        assert bm.num_used == 3
        bm.free(s)
        assert bm.num_used == 0 and s.block_table == []
        bm.check()

    def test_refuses_without_partial_allocation(self):
        bm = BlockManager(4, 4)            # 3 usable
        s = seq(5)
        assert not bm.ensure(s, 13)
        assert s.block_table == [] and bm.num_free == 3

    def test_slot(self):
        bm = BlockManager(10, 4)
        s = seq(6)
        bm.ensure(s, 6)
        assert [bm.slot(s, p) for p in (0, 3, 4, 5)] == [s.block_table[0] * 4, s.block_table[0] * 4 + 3,
                                                          s.block_table[1] * 4, s.block_table[1] * 4 + 1]


class TestScheduler:
    def test_chunked_prefill_interleaves_with_decodes(self):
        bm, sched = make(budget=16, chunk=8)
        a, b = seq(3, max_tokens=50), seq(3, max_tokens=50)
        sched.add(a), sched.add(b)
        fake_step(sched, bm)                                # both prefilled
        long = seq(100, max_tokens=2)
        sched.add(long)
        decode_steps = 0
        while long.num_cached < long.num_prompt_tokens:
            batch, _ = fake_step(sched, bm)
            assert a in batch.seqs and b in batch.seqs, "a running decode was stalled by a prefill"
            assert batch.num_new[batch.seqs.index(a)] == 1
            assert batch.num_new[batch.seqs.index(long)] <= 8
            decode_steps += 1
        assert decode_steps == -(-100 // 8)

    def test_decodes_first_then_budget_for_prefill(self):
        bm, sched = make(budget=10, chunk=16, max_num_seqs=8)
        olds = [seq(2, max_tokens=50) for _ in range(4)]
        for s in olds:
            sched.add(s)
        fake_step(sched, bm)
        sched.add(seq(40))
        batch, _ = fake_step(sched, bm)
        assert batch.num_new == [1, 1, 1, 1, 6]

    def test_every_block_freed_and_no_starvation_under_arrivals(self):
        rng = random.Random(0)
        bm, sched = make(num_blocks=40, block_size=4, max_num_seqs=4, budget=24, chunk=8)
        arrivals, admitted, step = [], [], 0
        while step < 400 or sched.has_work():
            if step < 400 and rng.random() < 0.5:
                s = seq(rng.randint(1, 30), max_tokens=rng.randint(1, 12))
                sched.add(s)
                arrivals.append(s)
            batch, _ = fake_step(sched, bm)
            admitted += [s for s in batch.admitted if s not in admitted]
            step += 1
            assert step < 5000, "scheduler stopped making progress"
        assert all(s.status is SequenceStatus.FINISHED for s in arrivals)
        assert admitted == arrivals, "admission is not FIFO: a later request overtook an earlier one"
        assert bm.num_used == 0 and not bm.owner
        bm.check()

    def test_preemption_when_blocks_run_out(self):
        bm, sched = make(num_blocks=9, block_size=4, max_num_seqs=4, budget=32, chunk=32)   # 8 usable
        a, b = seq(8, max_tokens=12), seq(8, max_tokens=12)
        sched.add(a), sched.add(b)
        preempted = []
        while sched.has_work():
            batch, _ = fake_step(sched, bm)
            preempted += batch.preempted
        assert b in preempted and a not in preempted      # the newest is the victim
        assert a.num_completion_tokens == 12 and b.num_completion_tokens == 12
        assert bm.num_used == 0
        bm.check()

    def test_refuses_request_that_can_never_fit(self):
        bm, sched = make(num_blocks=5, block_size=4)      # 16 tokens
        with pytest.raises(ValueError, match="KV blocks"):
            sched.add(seq(10, max_tokens=10))
        with pytest.raises(ValueError, match="at most"):
            make(max_model_len=8)[1].add(seq(8))

    def test_queue_bound(self):
        bm, sched = make(max_queue=3)
        for _ in range(3):
            sched.add(seq(2))
        with pytest.raises(QueueFull):
            sched.add(seq(2))
        fake_step(sched, bm)                              # admits them: room again
        sched.add(seq(2))

    def test_cancel_frees_blocks(self):
        bm, sched = make()
        a, b = seq(10, max_tokens=100), seq(10)
        sched.add(a), sched.add(b)
        fake_step(sched, bm)
        fake_step(sched, bm)
        assert bm.num_used > 0
        sched.finish(a, "abort")
        sched.finish(b, "abort")
        assert bm.num_used == 0 and not sched.has_work()
        waiting = seq(3)
        sched.add(waiting)
        sched.finish(waiting, "abort")
        assert not sched.waiting
        bm.check()

    def test_fifo_head_blocks_later_small_requests(self):
        bm, sched = make(num_blocks=9, block_size=4, max_num_seqs=8, budget=64, chunk=64)   # 8 usable
        big_running = seq(20, max_tokens=8)
        sched.add(big_running)
        fake_step(sched, bm)
        big_waiting, small = seq(20, max_tokens=2), seq(2, max_tokens=2)
        sched.add(big_waiting), sched.add(small)
        batch, _ = fake_step(sched, bm)
        assert small not in batch.seqs, "a later request overtook the head of the queue"
        while sched.has_work():
            fake_step(sched, bm)
        assert small.is_finished and big_waiting.is_finished
