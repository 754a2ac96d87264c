// A persistent pool: workers spin briefly between jobs (a decode step launches about five jobs
// per layer, too many for a condition-variable wake-up each), then sleep until the next one.
//
// parallel_for splits a job into chunks that threads claim, each starting with its own share. When
// more threads are runnable than there are cores (a capture thread, a recorder, another program), a
// worker may be descheduled for a whole time slice; with fixed shares every job would wait for it,
// with claimed chunks the running threads take over its share and only a chunk already started waits.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
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
    explicit ThreadPool(int n) : n_(n < 1 ? 1 : n), share_(new Share[n_]) {
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
        publish(0, true);
        fn(0);
        wait_done(n_ - 1);
    }

    // f(begin, end) over [0, n) in chunks (about four per thread) whose bounds are multiples of `align`.
    // Thread t first takes the chunks of its own share (the same rows every call, which stay in its
    // caches), then helps with the others' that are left.
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
        publish(chunks, false);
        claim(0);
        wait_done(chunks);
    }

private:
    static constexpr int kSpins = 1 << 17;  // about a millisecond of pause instructions
    static constexpr int kChunksPerThread = 4;
    // Each thread's share of a job is one atomic word: a tag (which job), whether the job is pinned
    // (run(): thread t runs fn(t)), the end of the share and the next chunk to claim. Claiming is one
    // fetch_add, and everything the claimer needs comes back in the same word: a worker that wakes late,
    // after its job finished and another was published, gets a chunk of the new job, never a mix.
    static constexpr int kEndShift = 16, kTagShift = 32;
    static constexpr uint64_t kNext = (uint64_t(1) << kEndShift) - 1, kPinned = uint64_t(1) << 31;

    // A pause, and every 256th time a yield, so that a thread queued behind the spinner on its core runs.
    static void relax(int spins) {
        if (spins % 256 == 0)
            std::this_thread::yield();
        else
            VILA_PAUSE();
    }

    void publish(int chunks, bool pinned) {
        done_.store(0, std::memory_order_relaxed);
        const uint64_t tag = ++tag_;
        for (int t = n_ - 1; t >= 0; --t) {  // share 0 last: a worker woken by it finds every share set
            const uint64_t b = uint64_t(chunks) * t / n_, e = uint64_t(chunks) * (t + 1) / n_;
            share_[t].word.store(tag << kTagShift | (pinned ? kPinned : 0) | e << kEndShift | b, std::memory_order_release);
        }
        if (sleeping_.load()) {  // taking the lock orders this after a sleeper's last check
            std::lock_guard<std::mutex> lock(mutex_);
        }
        wake_.notify_all();
    }

    // Chunks of the current job, own share first, until none are left. The job cannot finish while a
    // claimed chunk is unreported, so job_ is still the claimed chunk's function when it is read.
    void claim(int t) {
        int ran = 0;
        for (int k = 0; k < n_; ++k) {
            std::atomic<uint64_t>& word = share_[(t + k) % n_].word;
            for (;;) {
                const uint64_t v = word.fetch_add(1, std::memory_order_acq_rel);
                const int c = int(v & kNext), end = int((v & (kPinned - 1)) >> kEndShift);
                if ((v & kPinned) || c >= end) break;
                (*job_.load(std::memory_order_relaxed))(c);
                ++ran;
            }
        }
        if (ran) done_.fetch_add(ran, std::memory_order_release);
    }

    void wait_done(int count) {
        for (int spins = 1; done_.load(std::memory_order_acquire) < count; ++spins) relax(spins);
    }

    void work(int t) {
        uint64_t seen = 0;
        for (;;) {
            int spins = 0;
            uint64_t v;
            while ((v = share_[0].word.load(std::memory_order_acquire)) >> kTagShift == seen) {
                if (++spins < kSpins) {
                    relax(spins);
                    continue;
                }
                std::unique_lock<std::mutex> lock(mutex_);
                sleeping_.fetch_add(1);
                wake_.wait(lock, [&] { return share_[0].word.load() >> kTagShift != seen; });
                sleeping_.fetch_sub(1);
            }
            seen = v >> kTagShift;
            if (stop_) return;
            if (v & kPinned) {  // run() waits for every thread, so this job cannot have moved on
                (*job_.load(std::memory_order_relaxed))(t);
                done_.fetch_add(1, std::memory_order_release);
            } else {
                claim(t);
            }
        }
    }

    const int n_;
    std::vector<std::thread> workers_;
    struct alignas(64) Share {  // a cache line each: claims on one share do not slow the others
        std::atomic<uint64_t> word{0};
    };
    std::unique_ptr<Share[]> share_;
    uint64_t tag_ = 0;  // written by the calling thread only
    std::atomic<int> done_{0}, sleeping_{0};
    std::atomic<bool> stop_{false};
    std::atomic<const std::function<void(int)>*> job_{nullptr};
    std::mutex mutex_;
    std::condition_variable wake_;
};

}  // namespace vila
