#include "mmu/reference_walker.h"

#include <vector>

namespace mmu::reference {
namespace {

constexpr uint64_t Bit(int n) { return uint64_t{1} << n; }
constexpr uint64_t Bits(int hi, int lo) { return ((hi == 63) ? ~uint64_t{0} : (Bit(hi + 1) - 1)) & ~(Bit(lo) - 1); }

// A pending accessed/dirty update: physical address of the entry, the value
// read, and the bits to add.
struct PendingWrite {
  uint64_t pa;
  uint64_t seen;
  uint64_t add;
};

// ---------------------------------------------------------------- EPT ------

struct EptResult {
  bool ok = false;
  bool misconfig = false;
  uint64_t hpa = 0;
  bool r = true, w = true, x = true, ux = true;  // AND over the entries read
  std::vector<uint64_t> entry_pas;               // in walk order
  std::vector<uint64_t> entry_values;
  int references = 0;
};

EptResult EptWalk(FlatMemory& host, uint64_t eptp, const EptCaps& caps, uint64_t gpa,
                  Access access, bool user_linear) {
  EptResult res;
  const int levels = static_cast<int>((eptp >> 3) & 7) + 1;
  const uint64_t addr_bits = Bits(caps.maxphyaddr - 1, 12);
  uint64_t table = eptp & addr_bits;
  for (int level = levels; level >= 1; --level) {
    const int shift = 12 + 9 * (level - 1);
    const uint64_t entry_pa = table + ((gpa >> shift) & 511) * 8;
    if (entry_pa >= host.size_bytes()) {
      res.misconfig = true;
      return res;
    }
    const uint64_t e = host.Read64(entry_pa);
    res.references++;
    res.entry_pas.push_back(entry_pa);
    res.entry_values.push_back(e);
    const bool r = e & Bit(0), w = e & Bit(1), x = e & Bit(2), ux = e & Bit(10);
    const bool present = r || w || x || (caps.mode_based_execute && ux);
    if (!present) {
      res.r = res.w = res.x = res.ux = false;
      return res;  // EPT violation
    }
    // Is this entry a leaf?
    bool maps_page = level == 1;
    if ((level == 2 || level == 3) && (e & Bit(7))) maps_page = true;
    // Misconfiguration checks, SDM §29.3.3.1.
    if (w && !r) res.misconfig = true;
    if (x && !r && !w && !caps.execute_only) res.misconfig = true;
    if (e & Bits(51, caps.maxphyaddr)) res.misconfig = true;
    if (level >= 4 && (e & Bits(7, 3))) res.misconfig = true;
    if ((level == 2 || level == 3) && !maps_page && (e & Bits(6, 3))) res.misconfig = true;
    if (level == 3 && (e & Bit(7)) && !caps.gbpages) res.misconfig = true;
    if (maps_page) {
      const uint64_t type = (e >> 3) & 7;
      if (type == 2 || type == 3 || type == 7) res.misconfig = true;
      if (level == 3 && (e & Bits(29, 12))) res.misconfig = true;
      if (level == 2 && (e & Bits(20, 12))) res.misconfig = true;
    }
    if (res.misconfig) return res;
    res.r = res.r && r;
    res.w = res.w && w;
    res.x = res.x && x;
    res.ux = res.ux && ux;
    if (maps_page) {
      const uint64_t page_bytes = Bit(shift);
      res.hpa = (e & addr_bits & ~(page_bytes - 1)) + (gpa & (page_bytes - 1));
      bool allowed = false;
      if (access == Access::kRead) allowed = res.r;
      if (access == Access::kWrite) allowed = res.w;
      if (access == Access::kFetch) allowed = (caps.mode_based_execute && user_linear) ? res.ux : res.x;
      res.ok = allowed;
      return res;
    }
    table = e & addr_bits;
  }
  return res;  // not reached
}

uint64_t QualificationPerms(const EptResult& r, const EptCaps& caps) {
  uint64_t q = 0;
  if (r.r) q |= Bit(3);
  if (r.w) q |= Bit(4);
  if (r.x) q |= Bit(5);
  if (r.ux && caps.mode_based_execute) q |= Bit(6);
  return q;
}

uint64_t AccessQualification(Access a) {
  if (a == Access::kRead) return Bit(0);
  if (a == Access::kWrite) return Bit(1);
  return Bit(2);
}

void QueueEptAd(const EptResult& r, bool write, std::vector<PendingWrite>* writes) {
  for (size_t i = 0; i < r.entry_pas.size(); ++i) {
    uint64_t add = Bit(8);
    if (i + 1 == r.entry_pas.size() && write) add |= Bit(9);
    writes->push_back({r.entry_pas[i], r.entry_values[i], add});
  }
}

// ------------------------------------------------------------- guest -------

// Where guest-physical addresses live: either directly in `mem` (1-D) or
// behind EPT (2-D).
struct Space {
  FlatMemory* mem;
  bool nested;
  uint64_t eptp;
  EptCaps caps;
};

Outcome Walk(const Space& space, const PagingMode& mode, uint64_t cr3, const AccessRequest& req) {
  Outcome out;
  const bool ept_ad = space.nested && (space.eptp & Bit(6));
  const int levels = mode.levels;
  const uint64_t va = req.va;

  // §4.5.1: a non-canonical address never reaches the paging structures.
  const int va_bits = levels == 5 ? 57 : 48;
  const uint64_t upper = va >> (va_bits - 1);
  const uint64_t all_ones = (uint64_t{1} << (64 - va_bits + 1)) - 1;
  if (upper != 0 && upper != all_ones) {
    out.status = WalkStatus::kNonCanonical;
    return out;
  }

  const bool user_mode_access = req.cpl == 3 && !req.implicit_supervisor;
  const bool is_write = req.access == Access::kWrite;
  const bool is_fetch = req.access == Access::kFetch;
  uint32_t access_bits = 0;
  if (is_write) access_bits |= 2;
  if (user_mode_access) access_bits |= 4;
  if (is_fetch && (mode.nxe || mode.smep)) access_bits |= 16;

  std::vector<PendingWrite> ept_writes;
  std::vector<EptResult> table_translations;  // one per guest level walked
  std::vector<uint64_t> entry_gpas, entry_values, entry_hpas;

  const uint64_t addr_bits = Bits(mode.maxphyaddr - 1, 12);
  uint64_t table_gpa = cr3 & addr_bits;
  uint64_t leaf = 0;
  int leaf_level = 0;
  for (int level = levels; level >= 1; --level) {
    const int shift = 12 + 9 * (level - 1);
    const uint64_t entry_gpa = table_gpa + ((va >> shift) & 511) * 8;
    uint64_t entry_hpa = entry_gpa;
    if (space.nested) {
      const Access table_access = ept_ad ? Access::kWrite : Access::kRead;
      EptResult t = EptWalk(*space.mem, space.eptp, space.caps, entry_gpa, table_access, false);
      out.memory_references += t.references;
      if (t.misconfig) {
        out.status = WalkStatus::kEptMisconfig;
        out.fault_gpa = entry_gpa;
        return out;
      }
      if (!t.ok) {
        out.status = WalkStatus::kEptViolation;
        out.fault_gpa = entry_gpa;
        out.ept_qualification = AccessQualification(table_access) | QualificationPerms(t, space.caps) | Bit(7);
        return out;
      }
      entry_hpa = t.hpa;
      table_translations.push_back(t);
      if (entry_hpa >= space.mem->size_bytes()) {  // EPT maps the table outside host memory
        out.status = WalkStatus::kEptMisconfig;
        out.fault_gpa = entry_gpa;
        return out;
      }
    } else if (entry_gpa >= space.mem->size_bytes()) {
      out.status = WalkStatus::kBadTableAddress;
      return out;
    }
    const uint64_t e = space.mem->Read64(entry_hpa);
    out.memory_references++;
    entry_gpas.push_back(entry_gpa);
    entry_hpas.push_back(entry_hpa);
    entry_values.push_back(e);

    if (!(e & Bit(0))) {  // not present
      out.status = WalkStatus::kPageFault;
      out.error_code = access_bits;
      out.fault_level = level;
      return out;
    }
    const bool ps = e & Bit(7);
    bool reserved = (e & Bits(51, mode.maxphyaddr)) != 0;
    if (!mode.nxe && (e & Bit(63))) reserved = true;
    if (level >= 4 && ps) reserved = true;
    if (level == 3 && ps && !mode.gbpages) reserved = true;
    if (level == 3 && ps && mode.gbpages && (e & Bits(29, 13))) reserved = true;
    if (level == 2 && ps && (e & Bits(20, 13))) reserved = true;
    if (reserved) {
      out.status = WalkStatus::kPageFault;
      out.error_code = access_bits | 1 | 8;
      out.fault_level = level;
      return out;
    }
    if (level == 1 || ((level == 2 || level == 3) && ps)) {
      leaf = e;
      leaf_level = level;
      break;
    }
    table_gpa = e & addr_bits;
  }

  // "User-mode address": U/S = 1 in every entry. R/W and XD likewise combine.
  bool all_user = true, all_writable = true, any_xd = false;
  for (uint64_t e : entry_values) {
    if (!(e & Bit(2))) all_user = false;
    if (!(e & Bit(1))) all_writable = false;
    if (mode.nxe && (e & Bit(63))) any_xd = true;
  }

  // §4.6.1, case by case.
  bool allowed = true;
  if (user_mode_access) {
    if (!all_user) allowed = false;
    if (is_write && !all_writable) allowed = false;
    if (is_fetch && any_xd) allowed = false;
  } else {
    if (is_fetch) {
      if (all_user && mode.smep) allowed = false;
      if (any_xd) allowed = false;
    } else {
      if (all_user && mode.smap) {
        const bool explicit_with_ac = req.cpl < 3 && !req.implicit_supervisor && req.rflags_ac;
        if (!explicit_with_ac) allowed = false;
      }
      if (is_write && mode.wp && !all_writable) allowed = false;
    }
  }
  // §4.6.2 and §4.7 (PK bit).
  bool pk_violation = false;
  if (mode.pke && all_user && !is_fetch) {
    const int key = static_cast<int>((leaf >> 59) & 15);
    const bool ad = (mode.pkru >> (2 * key)) & 1;
    const bool wd = (mode.pkru >> (2 * key + 1)) & 1;
    if (ad) pk_violation = true;
    if (wd && is_write && (user_mode_access || mode.wp)) pk_violation = true;
  }
  if (!allowed || pk_violation) {
    out.status = WalkStatus::kPageFault;
    out.error_code = access_bits | 1 | (pk_violation ? 32 : 0);
    out.fault_level = leaf_level;
    return out;
  }

  const uint64_t page_bytes = Bit(12 + 9 * (leaf_level - 1));
  out.gpa = (leaf & addr_bits & ~(page_bytes - 1)) + (va & (page_bytes - 1));
  out.page_size = static_cast<PageSize>(leaf_level);

  // Guest A/D updates are writes to the guest tables (need EPT write rights).
  std::vector<PendingWrite> guest_writes;
  for (size_t i = 0; i < entry_values.size(); ++i) {
    uint64_t add = 0;
    if (!(entry_values[i] & Bit(5))) add |= Bit(5);
    if (i + 1 == entry_values.size() && is_write && !(entry_values[i] & Bit(6))) add |= Bit(6);
    if (add == 0) continue;
    if (space.nested && !table_translations[i].w) {
      out.status = WalkStatus::kEptViolation;
      out.fault_gpa = entry_gpas[i];
      out.ept_qualification = Bit(1) | QualificationPerms(table_translations[i], space.caps) | Bit(7);
      return out;
    }
    guest_writes.push_back({entry_hpas[i], entry_values[i], add});
  }

  if (space.nested) {
    EptResult f = EptWalk(*space.mem, space.eptp, space.caps, out.gpa, req.access, all_user);
    out.memory_references += f.references;
    if (f.misconfig) {
      out.status = WalkStatus::kEptMisconfig;
      out.fault_gpa = out.gpa;
      return out;
    }
    if (!f.ok) {
      out.status = WalkStatus::kEptViolation;
      out.fault_gpa = out.gpa;
      uint64_t q = AccessQualification(req.access) | QualificationPerms(f, space.caps) | Bit(7) | Bit(8);
      if (all_user) q |= Bit(9);
      if (all_writable) q |= Bit(10);
      if (any_xd) q |= Bit(11);
      out.ept_qualification = q;
      return out;
    }
    out.hpa = f.hpa;
    if (ept_ad) {
      for (const EptResult& t : table_translations) QueueEptAd(t, true, &ept_writes);
      QueueEptAd(f, is_write, &ept_writes);
    }
  } else {
    out.hpa = out.gpa;
  }

  for (const PendingWrite& w : guest_writes) space.mem->Write64(w.pa, space.mem->Read64(w.pa) | w.add);
  for (const PendingWrite& w : ept_writes) space.mem->Write64(w.pa, space.mem->Read64(w.pa) | w.add);
  out.status = WalkStatus::kOk;
  return out;
}

}  // namespace

Outcome Walk1D(FlatMemory& mem, const PagingMode& mode, uint64_t cr3, const AccessRequest& req) {
  return Walk(Space{&mem, false, 0, EptCaps{}}, mode, cr3, req);
}

Outcome Walk2D(FlatMemory& host, const PagingMode& mode, uint64_t cr3, uint64_t eptp,
               const EptCaps& caps, const AccessRequest& req) {
  return Walk(Space{&host, true, eptp, caps}, mode, cr3, req);
}

}  // namespace mmu::reference
