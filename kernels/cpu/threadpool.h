// A persistent pool: workers spin briefly between jobs (a decode step launches about five jobs
// per layer, too many for a condition-variable wake-up each), then sleep until the next one.
//
// parallel_for hands out chunks through one atomic counter instead of a fixed share per thread. When
// more threads are runnable than there are cores (a capture thread, a recorder, another program), a
// worker may be descheduled for a whole time slice; with fixed shares every job would wait for it,
// with claimed chunks the running threads finish its part and only a chunk already started waits.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define VILA_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define VILA_PAUSE() __asm__ __volatile__("yield")
#else
#define VILA_PAUSE() std::this_thread::yield()
#endif

namespace vila {

class ThreadPool {
public:
    explicit ThreadPool(int n) : n_(n < 1 ? 1 : n) {
        for (int t = 1; t < n_; ++t) workers_.emplace_back([this, t] { work(t); });
    }
    ~ThreadPool() {
        stop_ = true;
        publish(0, false);
        for (auto& w : workers_) w.join();
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_; }

    // fn(t) once on every thread t, the caller being thread 0; returns when all have finished.
    void run(const std::function<void(int)>& fn) {
        if (n_ == 1) return fn(0);
        job_.store(&fn, std::memory_order_relaxed);
        publish(n_ - 1, true);
        fn(0);
        wait_done(n_ - 1);
    }

    // f(begin, end) over [0, n) in chunks (about four per thread) whose bounds are multiples of `align`.
    template <class F>
    void parallel_for(int n, int align, F&& f) {
        const int units = (n + align - 1) / align;
        const int chunks = units < kChunksPerThread * n_ ? units : kChunksPerThread * n_;
        if (n_ == 1 || chunks <= 1) {
            if (n > 0) f(0, n);
            return;
        }
        const std::function<void(int)> chunk = [&](int c) {
            const int b = int(int64_t(units) * c / chunks) * align, e = int(int64_t(units) * (c + 1) / chunks) * align;
            if (b < n) f(b, e < n ? e : n);
        };
        job_.store(&chunk, std::memory_order_relaxed);
        const uint64_t tag = publish(chunks, false);
        claim(tag);
        wait_done(chunks);
    }

private:
    static constexpr int kSpins = 1 << 17;  // about a millisecond of pause instructions
    static constexpr int kChunksPerThread = 4;
    static constexpr uint64_t kPinned = uint64_t(1) << 31;  // run(): thread t runs fn(t), nobody claims

    // A pause, and every 256th time a yield, so that a thread queued behind the spinner on its core runs.
    static void relax(int spins) {
        if (spins % 256 == 0)
            std::this_thread::yield();
        else
            VILA_PAUSE();
    }

    // The job is one atomic word: its tag (which job) above bit 32, the pinned flag, the next chunk.
    // A worker claims a chunk by compare-exchange on it, so a worker that wakes late, after its job
    // is finished and another published, can never run a chunk of the one it thinks it is in.
    uint64_t publish(int count, bool pinned) {
        count_.store(count, std::memory_order_relaxed);
        done_.store(0, std::memory_order_relaxed);
        const uint64_t tag = (next_.load(std::memory_order_relaxed) >> 32) + 1;
        next_.store(tag << 32 | (pinned ? kPinned : 0), std::memory_order_release);
        if (sleeping_.load()) {  // taking the lock orders this after a sleeper's last check
            std::lock_guard<std::mutex> lock(mutex_);
        }
        wake_.notify_all();
        return tag;
    }

    // Chunks of job `tag` until none are left (or the job is no longer `tag`).
    void claim(uint64_t tag) {
        uint64_t v = next_.load(std::memory_order_acquire);
        while (v >> 32 == tag && !(v & kPinned)) {
            const int c = int(v & (kPinned - 1));
            if (c >= count_.load(std::memory_order_relaxed)) return;
            if (!next_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;  // v reloaded
            (*job_.load(std::memory_order_relaxed))(c);
            done_.fetch_add(1, std::memory_order_release);
            v = next_.load(std::memory_order_acquire);
        }
    }

    void wait_done(int count) {
        for (int spins = 1; done_.load(std::memory_order_acquire) < count; ++spins) relax(spins);
    }

    void work(int t) {
        uint64_t seen = 0;
        for (;;) {
            int spins = 0;
            uint64_t v;
            while ((v = next_.load(std::memory_order_acquire)) >> 32 == seen) {
                if (++spins < kSpins) {
                    relax(spins);
                    continue;
                }
                std::unique_lock<std::mutex> lock(mutex_);
                sleeping_.fetch_add(1);
                wake_.wait(lock, [&] { return next_.load() >> 32 != seen; });
                sleeping_.fetch_sub(1);
            }
            seen = v >> 32;
            if (stop_) return;
            if (v & kPinned) {  // run() waits for every thread, so this job cannot have moved on
                (*job_.load(std::memory_order_relaxed))(t);
                done_.fetch_add(1, std::memory_order_release);
            } else {
                claim(seen);
            }
        }
    }

    const int n_;
    std::vector<std::thread> workers_;
    std::atomic<uint64_t> next_{0};
    std::atomic<int> count_{0}, done_{0}, sleeping_{0};
    std::atomic<bool> stop_{false};
    std::atomic<const std::function<void(int)>*> job_{nullptr};
    std::mutex mutex_;
    std::condition_variable wake_;
};

}  // namespace vila
