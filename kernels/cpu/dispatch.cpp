// Which kernel table this CPU runs: CPUID (and the OS's saved vector state) on x86-64, HWCAP on
// Linux/aarch64, sysctl on macOS.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace vila {
namespace {

struct Table {
    const Kernels* declared;  // as its ISA file fills it
    bool supported;
    Kernels resolved{};  // every entry set: see all()
};

#if defined(__x86_64__) || defined(_M_X64)
uint64_t xgetbv0() {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}

std::vector<Table> tables() {
    unsigned a, b, c, d;
    bool avx2 = false, avx512 = false, vnni = false;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        const bool fma = c >> 12 & 1, osxsave = c >> 27 & 1, f16c = c >> 29 & 1;
        const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
        const bool ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
            avx2 = ymm && fma && f16c && (b >> 5 & 1);
            avx512 = avx2 && zmm && (b >> 16 & 1) && (b >> 30 & 1) && (b >> 31 & 1);  // F, BW, VL
            vnni = avx512 && (c >> 11 & 1);
        }
    }
    return {{&kRef, true}, {&kAvx2, avx2}, {&kAvx512, avx512}, {&kAvx512Vnni, vnni}};
}
#elif defined(__aarch64__)
bool has_dotprod() {
#if defined(__linux__)
    return getauxval(AT_HWCAP) & HWCAP_ASIMDDP;
#elif defined(__APPLE__)
    int v = 0;
    size_t n = sizeof(v);
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, nullptr, 0) == 0 && v;
#else
    return false;
#endif
}

std::vector<Table> tables() { return {{&kRef, true}, {&kNeon, true}, {&kNeonDot, has_dotprod()}}; }
#else
std::vector<Table> tables() { return {{&kRef, true}}; }
#endif

// tables() lists each architecture's tables from ref up, each one building on the one before it:
// its empty entries come from that one's resolved table.
const std::vector<Table>& all() {
    static const std::vector<Table> t = [] {
        std::vector<Table> v = tables();
        for (size_t i = 0; i < v.size(); ++i) {
            Kernels& r = v[i].resolved = *v[i].declared;
            if (i > 0)
                for_each_entry([&](const char*, auto member) {
                    if (!(r.*member)) r.*member = v[i - 1].resolved.*member;
                });
        }
        return v;
    }();
    return t;
}

}  // namespace

const Kernels* best_kernels() {
    const Kernels* best = &all()[0].resolved;
    for (const Table& t : all())
        if (t.supported) best = &t.resolved;
    return best;
}

const Kernels* kernels_named(const char* name) {
    for (const Table& t : all())
        if (t.supported && std::strcmp(t.resolved.name, name) == 0) return &t.resolved;
    return nullptr;
}

const char* const* supported_kernels(int* count) {
    static std::vector<const char*> names = [] {
        std::vector<const char*> v;
        for (const Table& t : all())
            if (t.supported) v.push_back(t.resolved.name);
        return v;
    }();
    *count = int(names.size());
    return names.data();
}

std::vector<std::pair<const char*, const char*>> kernel_sources(const Kernels& resolved) {
    std::vector<std::pair<const char*, const char*>> sources;
    for_each_entry([&](const char* entry, auto member) {
        const char* from = nullptr;
        for (const Table& t : all())
            if (!from && resolved.*member && t.declared->*member == resolved.*member) from = t.declared->name;
        sources.emplace_back(entry, from);
    });
    return sources;
}

const char* cpu_name() {
    static std::string name = [] {
        std::string n;
#if defined(__x86_64__) || defined(_M_X64)
        unsigned r[12];
        if (__get_cpuid(0x80000000, &r[0], &r[1], &r[2], &r[3]) && r[0] >= 0x80000004) {
            for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
            n.assign(reinterpret_cast<const char*>(r), 48);
            n.erase(n.find('\0') == std::string::npos ? n.size() : n.find('\0'));
        }
#endif
        if (n.empty()) {
            if (FILE* f = std::fopen("/proc/cpuinfo", "r")) {
                char line[256];
                while (std::fgets(line, sizeof line, f))
                    if (!std::strncmp(line, "model name", 10) || !std::strncmp(line, "Model", 5)) {
                        const char* colon = std::strchr(line, ':');
                        if (colon) n = colon + 2;
                        break;
                    }
                std::fclose(f);
            }
        }
        while (!n.empty() && (n.back() == '\n' || n.back() == ' ')) n.pop_back();
        while (!n.empty() && n.front() == ' ') n.erase(0, 1);
        return n.empty() ? std::string("unknown") : n;
    }();
    return name.c_str();
}

}  // namespace vila
