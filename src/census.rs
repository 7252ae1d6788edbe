//! What a run reads: the data root's price book and dataset files, listed once before the
//! run (the [`Census`], with each file's footer read), and the warnings of what a data
//! root holds that no run reads (folders that are no dataset, files not named
//! `*.parquet`, a required dataset without Parquet files).

use crate::error::{Result, TallyError};
use crate::load::{self, InputFile};
use crate::model::Dataset;
use crate::pricebook::{PriceBook, PriceBookReading};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Refuse a data root that is not a folder, saying whether it is missing (a typo, or a
/// relative path taken from another folder than meant) or something else.
pub fn check_data_root(root: &Path) -> Result<()> {
    let why = match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {
            // Before anything reads it (the fingerprint, the load): a pipe would hang both.
            let pricebook = root.join("pricebook.toml");
            return crate::pricebook::check_is_a_file(&pricebook, &pricebook.display().to_string());
        }
        Ok(_) => "data root is not a folder",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "data root does not exist (a relative --data is taken from the working folder, a \
             job file's data from the job file's folder)"
        }
        Err(_) => "data root cannot be read",
    };
    Err(TallyError::config(root.display().to_string(), why))
}

/// A dataset's files as `listed` (`None`: nothing of its name; a name that is not a
/// readable folder was refused by the listing), a missing folder refused if the dataset is
/// required.
fn dataset_files(
    root: &Path,
    dataset: Dataset,
    listed: Option<Vec<InputFile>>,
) -> Result<Vec<InputFile>> {
    match listed {
        Some(files) => Ok(files),
        None if !dataset.required() => Ok(Vec::new()),
        None => Err(TallyError::input(
            root.join(dataset.name()).display().to_string(),
            format!(
                "missing dataset folder `{}/` (it may be empty, but must exist)",
                dataset.name()
            ),
        )),
    }
}

/// The price book, input files and settings of a run.
pub struct Inputs {
    pub book: PriceBook,
    pub pricebook_path: PathBuf,
    /// The sha256 of the bytes `book` was parsed from.
    pub pricebook_sha256: String,
    /// Input files of each dataset (index = `Dataset as usize`).
    pub files: [Vec<InputFile>; 4],
}

/// The price book and input files of a data root, listing its datasets (and warning, as a
/// run's census does, of files not read and datasets without Parquet files).
pub fn inputs(root: &Path) -> Result<Inputs> {
    warn_of_folders_not_read(root);
    inputs_of(root, None, &|d| {
        let listing = load::list_dataset(root, d.name())?;
        if let Some(listing) = &listing {
            warn_of_files_not_read(d, listing);
        }
        Ok(listing.map(|l| l.files))
    })
}

/// [`inputs`], its files as the census listed them (the files a run loads are the files
/// its manifest lists) and its price book the census's reading (the one the manifest
/// lists): a run's census must carry one ([`Census::with_pricebook`]).
pub fn inputs_listed(root: &Path, census: &Census) -> Result<Inputs> {
    let reading = census.pricebook.clone().ok_or_else(|| {
        TallyError::Invariant("a run's census carries its reading of the price book".into())
    })?;
    let inputs = inputs_of(root, Some(reading), &|d| Ok(census.listed(d)))?;
    census.refuse_files_that_cannot_be_read()?;
    Ok(inputs)
}

/// The price book (`reading`, else read now) and input files of a data root, each
/// dataset's files as `list` gives them (`None`: no folder).
fn inputs_of(
    root: &Path,
    reading: Option<PriceBookReading>,
    list: &dyn Fn(Dataset) -> Result<Option<Vec<InputFile>>>,
) -> Result<Inputs> {
    check_data_root(root)?;
    let pricebook_path = root.join("pricebook.toml");
    let PriceBookReading { book, sha256 } = match reading {
        Some(reading) => reading,
        None => PriceBook::read(&pricebook_path, &pricebook_path.display().to_string())?,
    };
    let files = [
        dataset_files(root, Dataset::Usage, list(Dataset::Usage)?)?,
        dataset_files(root, Dataset::Allocations, list(Dataset::Allocations)?)?,
        dataset_files(root, Dataset::Grants, list(Dataset::Grants)?)?,
        dataset_files(root, Dataset::Debits, list(Dataset::Debits)?)?,
    ];
    Ok(Inputs {
        book,
        pricebook_path,
        pricebook_sha256: sha256,
        files,
    })
}

/// The input files of a data root with what one open of each tells (its size and footer's
/// rows; a file of at most 64 KiB is read whole and hashed), taken once before a run: the
/// run loads the files of this listing, the layout sizes the groups by the rows, the
/// fingerprint lists rows and checksums in the manifest without opening a small file
/// again (a month of small files spends its time opening and parsing them), and every
/// later opening of a file checks it is as this reading saw it
/// ([`InputFile::first_seen`]).
pub struct Census {
    /// Each dataset's files (index = `Dataset as usize`); `None`: the dataset has no folder
    /// (the run's inputs refuse a required one missing).
    pub files: [Option<Vec<CensusFile>>; 4],
    /// The price book as the run read it before its lock ([`Census::with_pricebook`]): the
    /// load prices with it and the manifest lists its sha256, so that both are of one
    /// reading. `None` (`verify`): the file is hashed as it is now.
    pub pricebook: Option<PriceBookReading>,
}

/// An input file as the census read it.
pub struct CensusFile {
    /// With `first_seen` set from the reading (`None`: its footer could not be read).
    pub file: InputFile,
    /// The sha256 of a file held whole ([`load::FooterRead::small_sha256`]).
    pub small_sha256: Option<[u8; 32]>,
    /// Its id columns' bytes ([`load::FooterRead::id_bytes`]).
    pub id_bytes: u64,
    /// Its footer was read, and a required column of its dataset is not among its columns
    /// (the load refuses it).
    pub lacks_a_required_column: bool,
}

impl CensusFile {
    /// The footer's row count, if it could be read.
    pub fn rows(&self) -> Option<u64> {
        self.file.first_seen.map(|seen| seen.rows)
    }
}

impl Census {
    /// List every dataset of `root` and read each file's footer (files in parallel).
    pub fn take(root: &Path) -> Result<Census> {
        let started = std::time::Instant::now();
        warn_of_folders_not_read(root);
        let mut files: [Option<Vec<CensusFile>>; 4] = Default::default();
        for d in Dataset::ALL {
            let Some(listing) = load::list_dataset(root, d.name())? else {
                continue;
            };
            warn_of_files_not_read(d, &listing);
            let read = listing.files.into_par_iter().map(|mut file| {
                let read = load::read_footer(&file.abs_path);
                file.first_seen = read.seen;
                let misnamed = misnamed_columns(d, &read.columns);
                let lacks_a_required_column = read.seen.is_some()
                    && (load::contract_columns(d).iter())
                        .any(|spec| spec.required && !read.columns.iter().any(|c| c == spec.name));
                let listed = CensusFile {
                    file,
                    small_sha256: read.small_sha256,
                    id_bytes: read.id_bytes,
                    lacks_a_required_column,
                };
                (listed, misnamed)
            });
            let (listed, misnamed): (Vec<_>, Vec<_>) = read.unzip();
            warn_of_misnamed_columns(d, &listed, &misnamed);
            files[d as usize] = Some(listed);
        }
        let census = Census {
            files,
            pricebook: None,
        };
        let count = census.file_count(&Dataset::ALL);
        crate::progress::log_stage("open inputs", count, count, started.elapsed());
        Ok(census)
    }

    /// The census with the run's reading of the price book.
    pub fn with_pricebook(self, reading: PriceBookReading) -> Census {
        Census {
            pricebook: Some(reading),
            ..self
        }
    }

    /// Every file listed, with its footer's reading, in dataset order.
    pub fn all(&self) -> impl Iterator<Item = &CensusFile> {
        self.files.iter().flatten().flatten()
    }

    /// The files of dataset `d` as listed (`None`: no folder).
    fn listed(&self, d: Dataset) -> Option<Vec<InputFile>> {
        let files = self.files[d as usize].as_ref()?;
        Some(files.iter().map(|listed| listed.file.clone()).collect())
    }

    /// The files of `datasets`, with their footers' readings.
    fn of<'a>(&'a self, datasets: &'a [Dataset]) -> impl Iterator<Item = &'a CensusFile> {
        (datasets.iter()).flat_map(|d| self.files[*d as usize].iter().flatten())
    }

    /// Rows in the files of `datasets`, from their footers (0 for unreadable files: the
    /// load reports them), saturating: a footer may say up to 2^63 - 1 rows, and the
    /// decoding refuses one that lies.
    pub(crate) fn rows(&self, datasets: &[Dataset]) -> u64 {
        self.of(datasets)
            .map(|listed| listed.rows().unwrap_or(0))
            .fold(0, u64::saturating_add)
    }

    /// The id columns' bytes in the files of `datasets`, from their footers, saturating.
    pub(crate) fn id_bytes(&self, datasets: &[Dataset]) -> u64 {
        (self.of(datasets).map(|listed| listed.id_bytes)).fold(0, u64::saturating_add)
    }

    /// Refuse the input files that cannot be read (a footer that cannot be decoded, a
    /// required column missing), naming them all, when there is more than one: the load
    /// stops at the first, and each would take a fix and a rerun of its own. The first is
    /// said in the load's words, the others by name. One such file is left to the load,
    /// which names it the same way.
    pub(crate) fn refuse_files_that_cannot_be_read(&self) -> Result<()> {
        let suspects: Vec<(&CensusFile, Dataset)> = (Dataset::ALL.iter())
            .flat_map(|&d| self.files[d as usize].iter().flatten().map(move |f| (f, d)))
            .filter(|(f, _)| f.file.first_seen.is_none() || f.lacks_a_required_column)
            .collect();
        if suspects.len() < 2 {
            return Ok(());
        }
        let mut refused: Vec<(&CensusFile, TallyError)> = (suspects.par_iter())
            .filter_map(|&(f, d)| {
                let opened = load::open_file(&f.file, load::contract_columns(d));
                opened.err().map(|e| (f, e))
            })
            .collect();
        if refused.len() < 2 {
            return Ok(());
        }
        let (first, first_error) = refused.remove(0);
        const NAMED: usize = 3;
        let mut others: Vec<String> = (refused.iter().take(NAMED))
            .map(|(f, _)| f.file.rel_path.clone())
            .collect();
        if refused.len() > NAMED {
            others.push(format!("and {} more", refused.len() - NAMED));
        }
        let more = format!(
            "{} more input {} cannot be read either ({}): fix every one before rerunning",
            refused.len(),
            if refused.len() == 1 { "file" } else { "files" },
            others.join(", ")
        );
        Err(match first_error {
            TallyError::Input { message, .. } => {
                TallyError::input(&first.file.rel_path, format!("{message}; {more}"))
            }
            other => TallyError::input(other.to_string(), more),
        })
    }

    /// How many files `datasets` have.
    pub(crate) fn file_count(&self, datasets: &[Dataset]) -> u64 {
        self.of(datasets).count() as u64
    }
}

/// The nullable columns of dataset `d` that a file with top-level columns `columns` lacks
/// but holds under a name that differs only in case or in `_`/`-`/spaces (`expiresAt`,
/// `Billing Anchor`): each with that name. Such a column is not read (names are
/// case-sensitive), so the contract's column reads as null: a grant that never expires, a
/// renewal on the period's own anniversary, every event priced at its generic rate.
fn misnamed_columns(d: Dataset, columns: &[String]) -> Vec<(&'static str, String)> {
    let simplified = |name: &str| -> String {
        (name.chars())
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    (load::contract_columns(d).iter())
        .filter(|spec| !spec.required && !columns.iter().any(|c| c == spec.name))
        .filter_map(|spec| {
            let like = columns
                .iter()
                .find(|c| simplified(c) == simplified(spec.name))?;
            Some((spec.name, like.clone()))
        })
        .collect()
}

/// Warn, once a column, of the nullable columns files of dataset `d` hold under another
/// spelling ([`misnamed_columns`]; `misnamed` in `files`' order): how many files, the first
/// with the name it used. A missing nullable column is valid input (read as null), so
/// this runs on; a misspelt required column is exit 2 when its file is read.
fn warn_of_misnamed_columns(
    d: Dataset,
    files: &[CensusFile],
    misnamed: &[Vec<(&'static str, String)>],
) {
    for spec in load::contract_columns(d)
        .iter()
        .filter(|spec| !spec.required)
    {
        let mut found = (files.iter().zip(misnamed))
            .flat_map(|(listed, m)| m.iter().map(move |(name, like)| (listed, *name, like)))
            .filter(|(_, name, _)| *name == spec.name);
        let Some((first, column, like)) = found.next() else {
            continue;
        };
        let count = 1 + found.count();
        let dataset = d.name();
        let first_path = &first.file.rel_path;
        let (files, them) = match count {
            1 => (format!("{first_path} holds"), "it"),
            n => (
                format!("{n} files of {dataset}/ (the first: {first_path}) hold"),
                "them",
            ),
        };
        tracing::warn!(
            dataset,
            column,
            found = like.as_str(),
            files_misnamed = count,
            first = %first_path,
            "{files} a column {like:?} and no `{column}`: column names must match exactly \
             (case, `_` and all), so {like:?} is not read and `{column}` is read as null in \
             {them}; if it is `{column}`, rename it and rerun"
        );
    }
}

/// Warn of the folders of the data root that are no dataset (a `Grants/` for `grants/`,
/// an export's `usage_v2/`): a misspelt `grants/` is read as no grants, so every grant
/// would drop from the run and from `grants_next` with nothing in the log saying why.
/// Files beside the datasets (a README, an export's manifest) are not warned of.
fn warn_of_folders_not_read(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    // A dataset that is a link to a folder beside it (`grants -> g2`): that folder is read.
    let datasets: Vec<PathBuf> = (Dataset::ALL.iter())
        .filter_map(|d| root.join(d.name()).canonicalize().ok())
        .collect();
    let read_through_a_link = |path: &Path| {
        path.canonicalize()
            .is_ok_and(|real| datasets.iter().any(|d| d.starts_with(&real)))
    };
    let mut names: Vec<String> = (entries.flatten())
        .filter(|e| e.path().is_dir() && !read_through_a_link(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !load::is_hidden(name) && !Dataset::ALL.iter().any(|d| d.name() == name))
        .collect();
    names.sort();
    let Some(first) = names.first() else {
        return;
    };
    let count = names.len();
    let folders = if count == 1 {
        "folder is"
    } else {
        "folders are"
    };
    tracing::warn!(
        folders_not_read = count,
        first = %first,
        "{count} {folders} not read in the data root (the first: {first}/): a data root's \
         datasets are the folders usage/, allocations/, grants/ and debits/, named \
         case-sensitively; rename it if it is one of them, else move it out of the data root \
         or under a name starting with . or _"
    );
}

/// Warn of what a dataset folder holds that the run does not read: files not named
/// `*.parquet` (an export's upper-case `.PARQUET` or `.csv`, a writer's `.tmp`), and a
/// required dataset with no Parquet file at all. Either runs (an empty folder is valid
/// input), but a month whose usage went unread would otherwise publish thousands of
/// discrepancies with nothing in the log saying why.
fn warn_of_files_not_read(dataset: Dataset, listing: &load::Listing) {
    let name = dataset.name();
    let not_read = &listing.not_read;
    if let Some(first) = &not_read.first {
        let count = not_read.count;
        let files = if count == 1 { "file is" } else { "files are" };
        tracing::warn!(
            dataset = name,
            files_not_read = count,
            first = %first,
            "{count} {files} not read under {name}/ (the first: {first}): only names ending \
             in .parquet are, case-sensitively; rename them if they are input, else move \
             them out of the data root or under a name starting with . or _"
        );
    }
    let rows = match dataset {
        Dataset::Usage => "usage events",
        Dataset::Allocations => "plan allocations",
        Dataset::Debits => "ledger entries",
        // Optional: many products grant nothing beyond their plans.
        Dataset::Grants => return,
    };
    if listing.files.is_empty() {
        tracing::warn!(
            dataset = name,
            "{name}/ holds no *.parquet file, so the run reads no {rows}; if an export has \
             not arrived yet, rerun once it has"
        );
    }
}
