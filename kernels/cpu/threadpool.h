// A persistent pool: workers spin briefly between jobs (a decode step launches about five jobs
// per layer, too many for a condition-variable wake-up each), then sleep until the next one.
#pragma once
#include <atomic>
#include <condition_variable>
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
        publish();
        for (auto& w : workers_) w.join();
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_; }

    // fn(t) on every thread t, the caller being thread 0; returns when all have finished.
    void run(const std::function<void(int)>& fn) {
        if (n_ == 1) return fn(0);
        job_ = &fn;
        remaining_.store(n_ - 1);
        publish();
        fn(0);
        for (int spins = 1; remaining_.load(std::memory_order_acquire); ++spins) relax(spins);
    }

    // f(begin, end) over [0, n) in size() contiguous chunks whose bounds are multiples of `align`.
    template <class F>
    void parallel_for(int n, int align, F&& f) {
        const int units = (n + align - 1) / align;
        run([&](int t) {
            const int b = units * t / n_ * align, e = units * (t + 1) / n_ * align;
            if (b < n) f(b, e < n ? e : n);
        });
    }

private:
    static constexpr int kSpins = 1 << 17;  // about a millisecond of pause instructions

    // A pause, and every 256th time a yield: when more threads are runnable than there are cores (a
    // capture thread beside the engine), the thread being waited for may be queued behind the spinner
    // on its core, and pausing alone would hold it off for a whole time slice per job.
    static void relax(int spins) {
        if (spins % 256 == 0)
            std::this_thread::yield();
        else
            VILA_PAUSE();
    }

    void publish() {
        epoch_.fetch_add(1);
        if (sleeping_.load()) {  // taking the lock orders this after a sleeper's last check
            std::lock_guard<std::mutex> lock(mutex_);
        }
        wake_.notify_all();
    }

    void work(int t) {
        uint64_t seen = 0;
        for (;;) {
            int spins = 0;
            uint64_t e;
            while ((e = epoch_.load(std::memory_order_acquire)) == seen) {
                if (++spins < kSpins) {
                    relax(spins);
                    continue;
                }
                std::unique_lock<std::mutex> lock(mutex_);
                sleeping_.fetch_add(1);
                wake_.wait(lock, [&] { return epoch_.load() != seen; });
                sleeping_.fetch_sub(1);
            }
            seen = e;
            if (stop_) return;
            (*job_)(t);
            remaining_.fetch_sub(1, std::memory_order_release);
        }
    }

    const int n_;
    std::vector<std::thread> workers_;
    std::atomic<uint64_t> epoch_{0};
    std::atomic<int> remaining_{0}, sleeping_{0};
    std::atomic<bool> stop_{false};
    const std::function<void(int)>* job_ = nullptr;
    std::mutex mutex_;
    std::condition_variable wake_;
};

}  // namespace vila
